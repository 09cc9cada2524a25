// Validation of an evaluated image spec (the dockerTools.streamLayeredImage names), so a
// typo in an expression is a clear error at pull time instead of a broken image; and the
// OCI platform (architecture, os) of the Nix system it was evaluated for.
//
// Room: build. May import src/blobs and src/oci; never src/registry.
import { InvalidImageSpec } from './errors.js';
import type { EvalJSON } from './nix/nix.js';
import type { ImageSpec } from './types.js';

type Check = (v: unknown) => string | undefined;

const strList: Check = (v) => Array.isArray(v) && v.every((x) => typeof x === 'string') ? undefined : 'a list of strings';
const str: Check = (v) => typeof v === 'string' ? undefined : 'a string';
const emptyObjects: Check = (v) => isObject(v) && Object.values(v).every((x) => isObject(x) && Object.keys(x).length === 0)
  ? undefined : 'an attribute set whose values are {}';
const strMap: Check = (v) => isObject(v) && Object.values(v).every((x) => typeof x === 'string')
  ? undefined : 'an attribute set of strings';

/** The OCI image config fields an expression may set, and their types. */
const CONFIG: Record<string, Check> = {
  Cmd: strList,
  Entrypoint: strList,
  Env: (v) => strList(v) ?? ((v as string[]).every((e) => /^[^=]+=/.test(e)) ? undefined : 'a list of "NAME=value" strings'),
  WorkingDir: str,
  User: str,
  ExposedPorts: (v) => emptyObjects(v) ?? (Object.keys(v as object).every((p) => /^\d{1,5}(\/(tcp|udp|sctp))?$/.test(p))
    ? undefined : 'an attribute set of "port/proto" keys ({ "8080/tcp" = { }; })'),
  Volumes: emptyObjects,
  Labels: strMap,
  StopSignal: str,
};

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function invalid(repo: string, msg: string): InvalidImageSpec {
  return new InvalidImageSpec(`image spec of ${repo} is invalid: ${msg}`);
}

export function validateSpec(repo: string, raw: EvalJSON): Omit<ImageSpec, 'contents' | 'os' | 'architecture'> & { architecture?: string } {
  if (raw.configType !== 'set' || !isObject(raw.config)) throw invalid(repo, `config must be an attribute set, got a ${raw.configType}`);
  for (const [k, v] of Object.entries(raw.config)) {
    const check = CONFIG[k];
    if (!check) throw invalid(repo, `unknown config attribute ${k} (allowed: ${Object.keys(CONFIG).join(', ')})`);
    const want = check(v);
    if (want) throw invalid(repo, `config.${k} must be ${want}`);
  }
  if (typeof raw.name !== 'string' || !raw.name) throw invalid(repo, 'name must be a non-empty string');
  if (!Number.isInteger(raw.maxLayers) || (raw.maxLayers as number) < 1 || (raw.maxLayers as number) > 125) {
    throw invalid(repo, `maxLayers must be an integer from 1 to 125, got ${JSON.stringify(raw.maxLayers)}`);
  }
  if (typeof raw.created !== 'string' || !RFC3339.test(raw.created) || Number.isNaN(Date.parse(raw.created))) {
    throw invalid(repo, `created must be an RFC 3339 time such as 1970-01-01T00:00:01Z, got ${JSON.stringify(raw.created)}`);
  }
  if (raw.architecture !== null && (typeof raw.architecture !== 'string' || !/^[a-z0-9_]+$/.test(raw.architecture))) {
    throw invalid(repo, `architecture must be an OCI architecture such as amd64 or arm64, got ${JSON.stringify(raw.architecture)}`);
  }
  return {
    name: raw.name,
    config: raw.config,
    maxLayers: raw.maxLayers as number,
    created: raw.created,
    ...(raw.architecture !== null ? { architecture: raw.architecture as string } : {}),
  };
}

const SYSTEMS: Record<string, [string, string]> = {
  'x86_64-linux': ['amd64', 'linux'],
  'aarch64-linux': ['arm64', 'linux'],
  'i686-linux': ['386', 'linux'],
  'armv7l-linux': ['arm', 'linux'],
  'armv6l-linux': ['arm', 'linux'],
  'riscv64-linux': ['riscv64', 'linux'],
  'powerpc64le-linux': ['ppc64le', 'linux'],
  's390x-linux': ['s390x', 'linux'],
  'x86_64-darwin': ['amd64', 'darwin'],
  'aarch64-darwin': ['arm64', 'darwin'],
};

/** OCI architecture and os of a Nix system double. */
export function platformOf(system: string): { architecture: string; os: string } {
  const p = SYSTEMS[system];
  if (p) return { architecture: p[0], os: p[1] };
  const [cpu = system, os = 'linux'] = system.split('-');
  return { architecture: cpu, os };
}
