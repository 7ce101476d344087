#!/usr/bin/env node
/** `catskim` command (package.json "bin"): the same as `node dist/src/main.js`. */
import './main.js';
