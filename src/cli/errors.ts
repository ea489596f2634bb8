/** How failures reach the user: `Error: <what is wrong and how to fix it>` lines, stacks only on request. */

/** A failure caused by the user's input, with the exit status to end with. */
export class UserError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
    this.name = 'UserError';
  }
}

/** DEBUG=ldm (or DEBUG=* or a comma list naming ldm) asks for stack traces. */
export function isDebug(env: NodeJS.ProcessEnv = process.env): boolean {
  const parts = (env.DEBUG ?? '').split(/[\s,]+/);
  return parts.some((p) => p === '*' || p === 'ldm' || p.startsWith('ldm:') || p === 'ldm*');
}

interface OclifErrorInfo {
  oclif?: { exit?: number };
  exitCode?: number;
  code?: string;
}

function info(err: unknown): OclifErrorInfo {
  return err !== null && typeof err === 'object' ? (err as OclifErrorInfo) : {};
}

/** The exit status for an error: its own (UserError, oclif's parse errors use 2), else 1. */
export function exitCodeOf(err: unknown): number {
  const e = info(err);
  const code = e.oclif?.exit ?? e.exitCode;
  return typeof code === 'number' && code > 0 ? code : 1;
}

/**
 * The message as one line (lines joined by ': ', as oclif splits "Parsing --threads" from its reason),
 * without oclif's "See more help with --help" or ANSI colours; never empty.
 */
export function errorMessage(err: unknown): string {
  return messageLines(err).join(': ');
}

function messageLines(err: unknown): string[] {
  const raw = err instanceof Error ? err.message : String(err);
  // eslint-disable-next-line no-control-regex
  const plain = raw.replace(/\u001b\[[0-9;]*m/g, '');
  const lines = plain
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && l !== 'See more help with --help');
  // oclif puts "Parsing --guidance" above a flag's own refusal; ours (cli/flags.ts) already starts with the flag.
  const parsing = /^Parsing (--[\w-]+)$/.exec(lines[0] ?? '');
  if (parsing && lines[1]?.startsWith(`${parsing[1]} `)) lines.shift();
  return lines.length > 0 ? lines : [err instanceof Error ? err.name : 'unknown error'];
}

/** Errors that list several independent problems (a config error: one per line) keep a line each. */
function problemsOf(err: unknown): string[] | undefined {
  const problems: unknown = err !== null && typeof err === 'object' ? (err as { problems?: unknown }).problems : undefined;
  return Array.isArray(problems) && problems.length > 0 && problems.every((p) => typeof p === 'string') ? problems : undefined;
}

/** Text for stderr: `Error: <message>` (one line per problem for a multi-problem error), then the stack when `debug`. */
export function formatError(err: unknown, debug = isDebug()): string {
  const lines = (problemsOf(err) ?? [errorMessage(err)]).map((l) => `Error: ${l}`);
  if (debug && err instanceof Error && err.stack) lines.push(err.stack);
  return `${lines.join('\n')}\n`;
}
