/**
 * The `state` config section: where the state replicas share lives.
 *
 *   state:
 *     url: ''              # '' = embedded SQLite/JSON files (one replica); postgres://... = shared
 *     replica: ''          # this replica's name in the shared rows ('' = the host name)
 *     pollMs: 500          # read changes this often besides LISTEN/NOTIFY
 */
import { hostname } from 'node:os';
import { defineSection, key, type ConfigSection } from '../../common/config-schema.js';

export interface StateConfig {
  url: string;
  replica: string;
  pollMs: number;
}

export const stateConfigSection: ConfigSection<StateConfig> = defineSection(
  'state',
  [
    key.string('url', '', "shared state: '' = embedded SQLite files (one replica), postgres://user:pass@host/db = PostgreSQL (many replicas)", { env: 'CATSKIM_STATE_URL' }),
    key.string('replica', '', "this replica's name, stored with the rows it writes", { env: 'CATSKIM_STATE_REPLICA', shownDefault: '<host name>' }),
    key.int('pollMs', 500, 20, 60_000, "read other replicas' changes at least this often (LISTEN/NOTIFY is immediate)", { env: 'CATSKIM_STATE_POLL_MS' }),
  ],
  (v, r) => {
    const c = v as unknown as StateConfig;
    if (c.url !== '' && !/^postgres(ql)?:\/\//.test(c.url)) r.fail('url', c.url.replace(/:[^:@/]*@/, ':***@'), "must be '' (embedded SQLite) or a postgres:// URL");
    return { ...c, replica: c.replica || hostname() };
  },
);
