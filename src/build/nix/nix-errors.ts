// What a user needs from a Nix failure: the error itself, where Nix places it, and the
// spot in the user's own files that led there; never the frames of nixreg's own
// eval.nix. The layouts differ by version: Nix 2.8 prints the error first (and, with
// --show-trace, the frames after it, innermost first); Nix 2.18 and later print the
// frames first, outermost first, and the error last, indented. Both write the same
// record in `--log-format internal-json` (an `@nix {"action":"msg","level":0,…}` line
// with raw_msg, file, line, column and, with --show-trace, the trace), which is read
// where there is one; the text is the fallback (nix-store's build errors, a Nix that
// fails before it logs, such as 2.8's stack overflow).
//
// Room: build/nix, the Nix adapter. Of build, imports only the shared errors.ts, types.ts and semaphore.ts;
// may import src/blobs and src/oci; never src/registry.

/** A place in a Nix file. */
export interface NixPos { file: string; line: number; column: number }

/** One frame of Nix's trace: what Nix was doing, and where. */
export interface NixFrame { what: string; pos?: NixPos | undefined }

/** The error record of an internal-json log. */
export interface NixErrorRecord {
  message: string;
  pos?: NixPos | undefined;
  /** Nix's excerpt of the source at `pos` (the numbered lines and the caret). */
  excerpt: string[];
  /** Innermost first. */
  trace: NixFrame[];
}

const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
/** An error's own words reach the client: a `throw` of a megabyte string is cut. */
const MAX_MESSAGE = 4096;
const MAX_PLAIN_LINE = 16384;
const FRAME = /^\s*(?:…|\(stack trace truncated)/;
const EXCERPT = /^\s*\d*\|/;

function strip(s: string): string { return s.replace(ANSI, ''); }

/**
 * The last `error:` line of `lines` and what follows it up to a trace frame. Its first
 * line loses the indentation of 2.18+'s layout; the lines after it are indented alike in
 * both layouts (position, excerpt, a message's further lines).
 */
function errorBlock(lines: string[]): string[] | undefined {
  let i = -1;
  for (let j = lines.length - 1; j >= 0; j--) if (/^\s*error:/.test(lines[j]!)) { i = j; break; }
  if (i < 0) return undefined;
  const block = [lines[i]!.trimStart()];
  for (const l of lines.slice(i + 1)) {
    if (FRAME.test(l)) break;
    if (!/use '--show-trace'/.test(l)) block.push(l.trimEnd());
  }
  return block;
}

/**
 * The part of Nix's plain stderr a user needs: the last error (wherever its layout puts
 * it) with its position and excerpt, at most a dozen lines, without colours, blank
 * lines or trace frames.
 */
export function essentialError(stderr: string): string {
  const lines = strip(stderr).split('\n');
  const block = errorBlock(lines);
  if (!block) return lines.filter((l) => l.trim() && !/^\s*warning:/.test(l)).slice(-6).join('\n').trim();
  return block.filter((l) => l.trim()).slice(0, 12).join('\n').replace(/\s+$/, '');
}

/** A position as internal-json gives it: Nix 2.18+ append `:line:column` to the file, and write «none» for none. */
function posOf(r: { file?: unknown; line?: unknown; column?: unknown }): NixPos | undefined {
  const line = typeof r.line === 'number' ? r.line : 0;
  const column = typeof r.column === 'number' ? r.column : 0;
  if (typeof r.file !== 'string' || !r.file.startsWith('/') || line < 1) return undefined;
  let file = r.file;
  for (const suffix of [`:${line}:${column}`, `:${line}`]) if (file.endsWith(suffix)) { file = file.slice(0, -suffix.length); break; }
  return { file, line, column };
}

/** A log line of internal-json, if `l` is one. */
function record(l: string): Record<string, unknown> | undefined {
  if (!l.startsWith('@nix {')) return undefined;
  try { return JSON.parse(l.slice(5)) as Record<string, unknown>; } catch { return undefined; }
}

/**
 * Reads stderr written with `--log-format internal-json`: the readable text of every
 * message (what the plain format would have shown, for logs and for the diagnoses of
 * nix-health.ts) and the last error record. Lines that are not records (Nix failing
 * before its logger is set up) stay as they are.
 */
export function readJsonLog(stderr: string): { text: string; error?: NixErrorRecord | undefined } {
  const text: string[] = [];
  let error: NixErrorRecord | undefined;
  for (const l of stderr.split('\n')) {
    const r = record(l);
    // Not a record: plain text (Nix failing before its logger is set up), or the end of a
    // record whose start the kept tail cut off (a trace of megabytes), which is dropped.
    if (!r) { if (l.trim() && l.length <= MAX_PLAIN_LINE) text.push(l); continue; }
    if (r.action !== 'msg' || typeof r.msg !== 'string') continue;
    const msg = strip(r.msg);
    text.push(msg);
    if (r.level !== 0) continue;
    const block = errorBlock(msg.split('\n')) ?? [];
    const message = strip(typeof r.raw_msg === 'string' ? r.raw_msg : (block[0] ?? msg).replace(/^error:\s*/, '')).trim();
    error = {
      message: message.length > MAX_MESSAGE ? `${message.slice(0, MAX_MESSAGE)}…` : message,
      pos: posOf(r),
      excerpt: block.filter((l) => EXCERPT.test(l)).slice(0, 8),
      trace: Array.isArray(r.trace)
        ? (r.trace as Record<string, unknown>[]).map((f) => ({ what: strip(String(f.raw_msg ?? '')).trim(), pos: posOf(f) }))
        : [],
    };
  }
  return { text: text.join('\n'), error };
}

const at = (p: NixPos) => `${p.file}:${p.line}:${p.column}`;

/**
 * The error as a user reads it: the message; Nix's position and excerpt unless the
 * position is in one of nixreg's `own` files; and, where that position is not in the
 * user's files (none, nixreg's, a package set's), the innermost frame that is, as Nix
 * 2.18+ give builtins' errors no position at all. `mine` says which files are the
 * user's (by default any that is not nixreg's).
 */
export function describeError(e: NixErrorRecord, own: string[], mine: (file: string) => boolean = () => true): string {
  const isOwn = (p?: NixPos) => !!p && own.includes(p.file);
  const isMine = (p?: NixPos): p is NixPos => !!p && !isOwn(p) && mine(p.file);
  const out = [`error: ${e.message.replace(/\n/g, '\n       ')}`];
  if (e.pos) {
    out.push(`       at ${at(e.pos)}${isOwn(e.pos) ? '' : ':'}`);
    if (!isOwn(e.pos)) out.push(...e.excerpt);
  }
  if (!isMine(e.pos)) {
    const frame = e.trace.find((f) => isMine(f.pos) && at(f.pos!) !== (e.pos && at(e.pos)));
    if (frame) out.push(`       … ${frame.what || 'from'}`, `         at ${at(frame.pos!)}`);
  }
  return out.join('\n');
}
