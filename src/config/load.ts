/**
 * Finding, parsing and validating config files. A config ref is a file path or a zoo name (`kl-f8` is
 * configs/<folder>/kl-f8.yaml). Zoo folders: those in LDM_CONFIG_DIR (path-list, searched first, so a user's
 * file shadows a built-in one of the same name), then the package's own configs/.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Document, LineCounter, isSeq, parseDocument, visit, isScalar } from 'yaml';
import { show } from './fields.js';
import { ConfigError, formatIssues, locate, type SourceMap } from './issues.js';
import { configSchemas, isModelKind, modelKinds, summarizeConfig, type LdmConfig, type ModelKind } from './schema.js';
import { didYouMean } from '../util/suggest.js';

export { ConfigError } from './issues.js';

/**
 * Reads a config written in another format as ours, or returns undefined when `data` is not in that format. config/
 * knows only ldm's own format; the checkpoint layer passes the reference's (checkpoint/reference-config.ts's
 * referenceConfigReader: model.target YAMLs), so reading one never needs an import from above.
 */
export type ForeignConfigReader = (data: unknown, file: string) => LdmConfig | undefined;

export interface ConfigReadOptions {
  /** Also accept configs this reader maps onto ours. */
  foreign?: ForeignConfigReader;
}

export interface LoadedConfig<C extends LdmConfig = LdmConfig> {
  readonly config: C;
  /** Absolute path of the file it came from. */
  readonly path: string;
}

export interface ZooEntry {
  readonly name: string;
  readonly kind: ModelKind;
  /** Absolute path of the YAML file. */
  readonly path: string;
  /** One line derived from the config (f, latent shape, widths). */
  readonly summary: string;
  /** The file's first comment line, without `#`. */
  readonly description: string;
}

/** Same depth from src/config and dist/config, so this holds for tsx and the built package alike. */
const packageConfigDir = fileURLToPath(new URL('../../configs/', import.meta.url));

/** Folders searched for zoo names, in priority order. */
export function configDirs(): string[] {
  const extra = (process.env.LDM_CONFIG_DIR ?? '').split(path.delimiter).filter((d) => d.trim() !== '');
  return [...extra.map((d) => path.resolve(d)), path.resolve(packageConfigDir)];
}

/** Load a config by file path or zoo name; `kind` demands a model kind (e.g. 'autoencoder'). */
export function loadConfig<K extends ModelKind>(ref: string, kind: K, opts?: ConfigReadOptions): LoadedConfig<Extract<LdmConfig, { model: K }>>;
export function loadConfig(ref: string, kind?: undefined, opts?: ConfigReadOptions): LoadedConfig;
export function loadConfig(ref: string, kind?: ModelKind, opts: ConfigReadOptions = {}): LoadedConfig {
  const file = resolveConfigRef(ref);
  const config = parseConfig(fs.readFileSync(file, 'utf8'), displayPath(file), opts);
  if (kind !== undefined && config.model !== kind) {
    throw new ConfigError([`${displayPath(file)}: model: this is a "${config.model}" config, but a "${kind}" config is needed here`]);
  }
  return { config, path: file };
}

/** Absolute path for a file path or zoo name; throws with close names when nothing matches. */
export function resolveConfigRef(ref: string): string {
  const looksLikePath = /\.ya?ml$/i.test(ref) || ref.includes('/') || ref.includes(path.sep);
  if (looksLikePath || isFile(ref)) {
    if (isFile(ref)) return path.resolve(ref);
    throw new Error(`config file ${ref} not found; give an existing YAML file or a zoo name (ldm zoo lists them)`);
  }
  const found = zooFiles().get(ref);
  if (found) return found;
  const hint = didYouMean(ref, [...zooFiles().keys()]);
  throw new Error(`unknown config "${ref}": not a file and not a zoo name${hint}; ldm zoo lists the zoo`);
}

/** Parse and validate YAML text; `file` names the source in messages. */
export function parseConfig(text: string, file: string, opts: ConfigReadOptions = {}): LdmConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    // One syntax slip (a tab, an unclosed bracket) makes the parser report every line after it too; only the
    // earliest error is the user's, the rest are consequences.
    const first = doc.errors.reduce((a, b) => (b.pos[0] < a.pos[0] ? b : a));
    const pos = first.linePos?.[0] ?? lines.linePos(first.pos[0]);
    const what = first.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '');
    throw new ConfigError([`${file}:${pos.line}:${pos.col}: YAML syntax error: ${what}`]);
  }
  return validateConfig(doc.toJS(), file, { ...opts, source: { doc, lines } });
}

/** Validate an already-parsed object (e.g. a config stored in a checkpoint). */
export function validateConfig(data: unknown, file: string, opts: ConfigReadOptions & { source?: SourceMap } = {}): LdmConfig {
  const foreign = opts.foreign?.(data, file);
  if (foreign !== undefined) return foreign;
  const source = opts.source;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError([`${file}: expected a mapping of config keys, got ${show(data)}`]);
  }
  const model = (data as Record<string, unknown>).model;
  if (!isModelKind(model)) {
    const kinds = modelKinds.map((k) => `"${k}"`).join(', ');
    const got = model === undefined ? 'missing' : `got ${show(model)}${typeof model === 'string' ? didYouMean(model, modelKinds) : ''}`;
    throw new ConfigError([`${locate(file, ['model'], source)}: model: ${got}; expected one of ${kinds}`]);
  }
  const result = configSchemas[model].safeParse(data);
  if (!result.success) throw new ConfigError(formatIssues(result.error.issues, file, source));
  return result.data;
}

/** Every config in the zoo folders, sorted by kind then name; shadowed duplicates are left out. */
export function listZoo(opts: ConfigReadOptions = {}): ZooEntry[] {
  const entries: ZooEntry[] = [];
  for (const [name, file] of zooFiles()) {
    const text = fs.readFileSync(file, 'utf8');
    const config = parseConfig(text, displayPath(file), opts);
    const first = text.split('\n').find((l) => l.trim() !== '');
    const description = first?.trim().startsWith('#') ? first.trim().replace(/^#+\s*/, '') : '';
    entries.push({ name, kind: config.model, path: file, summary: summarizeConfig(config), description });
  }
  return entries.sort((a, b) => a.kind.localeCompare(b.kind) || naturalCompare(a.name, b.name));
}

/** YAML of a resolved config (defaults filled in), for a run folder; `header` becomes a leading comment. */
export function dumpConfig(config: LdmConfig, header?: string): string {
  const doc = new Document(config);
  visit(doc, {
    // Short lists of numbers read best inline: `ch_mult: [1, 2, 4, 4]`.
    Seq(_, node) {
      if (isSeq(node) && node.items.every((it) => isScalar(it))) node.flow = true;
    },
    // 4.5e-6, not 0.0000045.
    Scalar(_, node) {
      if (typeof node.value === 'number' && node.value !== 0 && Math.abs(node.value) < 1e-3) node.format = 'EXP';
    },
  });
  if (header) doc.commentBefore = header.split('\n').map((l) => ` ${l}`).join('\n');
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false });
}

/** Zoo name -> file, first folder wins. */
function zooFiles(): Map<string, string> {
  const out = new Map<string, string>();
  for (const dir of configDirs()) {
    for (const file of yamlFilesUnder(dir)) {
      const name = path.basename(file).replace(/\.ya?ml$/i, '');
      if (!out.has(name)) out.set(name, file);
    }
  }
  return out;
}

function yamlFilesUnder(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  const files: string[] = [];
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) files.push(...yamlFilesUnder(full));
    else if (e.isFile() && /\.ya?ml$/i.test(e.name)) files.push(full);
  }
  return files;
}

function isFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Relative to the working directory when inside it, as users typed it; absolute otherwise. */
function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

/** `kl-f4` < `kl-f8` < `kl-f16`. */
function naturalCompare(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}
