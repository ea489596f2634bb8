/**
 * Progress for long loops, on stderr so stdout stays for results. On a terminal: live cli-progress bars
 * (nested ones through `inner()`). Piped: plain throttled lines such as
 * `step 120/1000 loss=0.0312 3.4 it/s eta 4m18s`, one per N steps or 2 s. Nothing with --quiet or --json.
 */
import cliProgress from 'cli-progress';
import type { Progress, ProgressFields } from '../util/progress.js';

// The interface lives in util/, so the library (metrics, study) takes a Progress without reaching up into cli/.
export type { Progress, ProgressFields } from '../util/progress.js';

export type ProgressStream = NodeJS.WritableStream & { isTTY?: boolean };

export interface ProgressOptions {
  total: number;
  /** The unit counted, printed before the position: `step 3/10`, `image 2/16`. Default `step`. */
  label?: string;
  json?: boolean;
  quiet?: boolean;
  stream?: ProgressStream;
  /** Force the bar (true) or plain lines (false); default: bars when the stream is a terminal. */
  tty?: boolean;
  /** Plain mode: the outermost bar prints after this many steps (default total/10) ... */
  everySteps?: number;
  /** ... or this many milliseconds since the last line (default 2000), whichever comes first; inner bars only by time. */
  everyMs?: number;
  /** Clock in milliseconds, for tests. */
  now?: () => number;
}

export function createProgress(opts: ProgressOptions): Progress {
  const stream = opts.stream ?? process.stderr;
  const now = opts.now ?? Date.now;
  let sink: Sink;
  if (opts.quiet || opts.json) sink = new NullSink();
  else if (opts.tty ?? (stream.isTTY === true && process.env.TERM !== 'dumb')) sink = new TtySink(stream);
  else sink = new PlainSink(stream, now, opts.everySteps, opts.everyMs ?? 2000);
  return new Bar(sink, now, opts.total, opts.label ?? 'step');
}

/** `42s`, `4m18s`, `1h02m`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** `0.0312`, `1.23e-5`, `42`: four significant digits, exponent outside [1e-3, 1e4). */
export function formatValue(v: number | string): string {
  if (typeof v === 'string') return v;
  if (Number.isInteger(v) || !Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a < 1e-3 || a >= 1e4) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

export function formatFields(fields: ProgressFields): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}=${formatValue(v)}`)
    .join(' ');
}

/** `3.4 it/s`, or `5.2 s/it` when slower than one a second. */
export function formatRate(perSecond: number | undefined): string {
  if (perSecond === undefined || !Number.isFinite(perSecond) || perSecond <= 0) return '? it/s';
  const sig = (x: number): string => (x >= 100 ? String(Math.round(x)) : String(Number(x.toPrecision(2))));
  return perSecond >= 1 ? `${sig(perSecond)} it/s` : `${sig(1 / perSecond)} s/it`;
}

/** Rate over the last RATE_WINDOW_MS, so a slow first step (compilation, warm-up) fades out of it. */
const RATE_WINDOW_MS = 30_000;

class Bar implements Progress {
  step = 0;
  readonly fields: ProgressFields = {};
  private readonly samples: { t: number; step: number }[] = [];
  private stopped = false;

  constructor(
    private readonly sink: Sink,
    private readonly now: () => number,
    readonly total: number,
    readonly label: string,
    readonly parent?: Bar,
  ) {
    this.samples.push({ t: now(), step: 0 });
    sink.add(this);
  }

  update(step: number, fields: ProgressFields = {}): void {
    if (this.stopped) return;
    this.step = step;
    Object.assign(this.fields, fields);
    const t = this.now();
    this.samples.push({ t, step });
    while (this.samples.length > 2 && t - this.samples[1].t >= RATE_WINDOW_MS) this.samples.shift();
    this.sink.render(this);
  }

  increment(fields?: ProgressFields): void {
    this.update(this.step + 1, fields);
  }

  inner(opts: { total: number; label?: string }): Progress {
    return new Bar(this.sink, this.now, opts.total, opts.label ?? 'step', this);
  }

  log(line: string): void {
    this.sink.log(line);
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.sink.finish(this);
  }

  /** Steps per second over the recent window. */
  rate(): number | undefined {
    const first = this.samples[0];
    const last = this.samples[this.samples.length - 1];
    const dt = (last.t - first.t) / 1000;
    return dt > 0 && last.step > first.step ? (last.step - first.step) / dt : undefined;
  }

  /** Seconds left, when the rate and total are known. */
  eta(): number | undefined {
    const r = this.rate();
    return r && this.total > 0 ? Math.max(0, this.total - this.step) / r : undefined;
  }

  position(): string {
    return this.total > 0 ? `${this.label} ${this.step}/${this.total}` : `${this.label} ${this.step}`;
  }

  /** The plain line: position, fields, rate, ETA. */
  describe(): string {
    const parts = [this.position()];
    const f = formatFields(this.fields);
    if (f) parts.push(f);
    parts.push(formatRate(this.rate()));
    const eta = this.eta();
    if (eta !== undefined && this.step < this.total) parts.push(`eta ${formatDuration(eta)}`);
    return parts.join(' ');
  }
}

interface Sink {
  add(bar: Bar): void;
  render(bar: Bar): void;
  finish(bar: Bar): void;
  log(line: string): void;
}

class NullSink implements Sink {
  add(): void {}
  render(): void {}
  finish(): void {}
  log(): void {}
}

class PlainSink implements Sink {
  private readonly last = new Map<Bar, { step: number; t: number; printed: boolean }>();

  constructor(
    private readonly stream: ProgressStream,
    private readonly now: () => number,
    private readonly everySteps: number | undefined,
    private readonly everyMs: number,
  ) {}

  add(bar: Bar): void {
    this.last.set(bar, { step: 0, t: this.now(), printed: false });
  }

  render(bar: Bar): void {
    const last = this.last.get(bar);
    if (!last) return;
    const t = this.now();
    let due = t - last.t >= this.everyMs;
    // Outermost bars also print their first line (the loop started), every N steps and the last;
    // inner ones only when slow, so a log holds a line per image rather than per denoising step.
    if (!bar.parent) {
      const every = this.everySteps ?? Math.max(1, Math.ceil(bar.total / 10));
      due ||= !last.printed || Math.floor(bar.step / every) > Math.floor(last.step / every) || (bar.total > 0 && bar.step >= bar.total);
    }
    if (due && bar.step !== last.step) this.print(bar, t);
  }

  finish(bar: Bar): void {
    const last = this.last.get(bar);
    if (last && !bar.parent && bar.step !== last.step) this.print(bar, this.now());
    this.last.delete(bar);
  }

  log(line: string): void {
    this.stream.write(`${line}\n`);
  }

  private print(bar: Bar, t: number): void {
    let prefix = '';
    for (let p = bar.parent; p; p = p.parent) prefix = `${p.position()} ${prefix}`;
    this.stream.write(`${prefix}${bar.describe()}\n`);
    this.last.set(bar, { step: bar.step, t, printed: true });
  }
}

class TtySink implements Sink {
  private readonly multi: cliProgress.MultiBar;
  private readonly bars = new Map<Bar, cliProgress.SingleBar>();

  constructor(private readonly stream: ProgressStream) {
    this.multi = new cliProgress.MultiBar(
      {
        stream,
        format: '{where} |{bar}| {info}',
        barsize: 24,
        hideCursor: false,
        clearOnComplete: false,
        autopadding: true,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  add(bar: Bar): void {
    this.bars.set(bar, this.multi.create(Math.max(1, bar.total), 0, this.payload(bar)));
  }

  render(bar: Bar): void {
    this.bars.get(bar)?.update(bar.step, this.payload(bar));
  }

  finish(bar: Bar): void {
    const b = this.bars.get(bar);
    if (!b) return;
    this.bars.delete(bar);
    if (bar.parent) {
      this.multi.remove(b);
    } else {
      b.update(bar.step, this.payload(bar));
      this.multi.update(); // flushes pending log lines, which stop() would drop
      this.multi.stop();
    }
  }

  log(line: string): void {
    if (this.bars.size > 0) this.multi.log(`${line}\n`);
    else this.stream.write(`${line}\n`);
  }

  private payload(bar: Bar): Record<string, string> {
    const eta = bar.eta();
    const left = eta !== undefined && bar.step < bar.total ? `eta ${formatDuration(eta)}` : '';
    return { where: bar.position(), info: [formatFields(bar.fields), formatRate(bar.rate()), left].filter((s) => s !== '').join(' ') };
  }
}
