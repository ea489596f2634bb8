/**
 * One generation at a time, in arrival order, with a bounded wait list: a request arriving when `capacity` are
 * already waiting is refused at once (QueueFullError, a 429) rather than held for minutes. The running job reports
 * its progress and a lazily drawn preview here, where /progress, the SSE stream and interrupt find them.
 */
import type { HostTensor } from '../engine/host-tensor.js';
import { collectGarbage } from '../util/memory-budget.js';

/** The server is shutting down: requests still waiting are answered with this (a 503). */
export class ShuttingDownError extends Error {
  constructor() {
    super('the server is shutting down');
  }
}

export class QueueFullError extends Error {
  constructor(capacity: number) {
    super(`the queue is full (${capacity} waiting); retry later`);
  }
}

/** Thrown inside a run at its next step once interrupt() was called; the request answers with what it has. */
export class InterruptedError extends Error {
  constructor() {
    super('interrupted');
  }
}

/** What a running job is told to report through. */
export interface JobContext {
  /** After each denoising step: overall fraction done in [0, 1], the step within the current batch, and that batch's steps. Throws InterruptedError when asked to stop. */
  step(fraction: number, step: number, steps: number, preview?: () => HostTensor): void;
}

export interface JobSnapshot {
  /** Jobs started since the server did (the running one included). */
  jobNo: number;
  /** Waiting, not counting the running one. */
  queued: number;
  running?: {
    label: string;
    startedAt: number;
    fraction: number;
    step: number;
    steps: number;
    /** Bumped with every reported step: a preview is redrawn only when it moves. */
    version: number;
    interrupted: boolean;
  };
}

/** The running job as the queue holds it: what a snapshot shows, and its preview. */
type Running = NonNullable<JobSnapshot['running']> & { preview?: () => HostTensor };

type Listener = (s: JobSnapshot) => void;

export class JobQueue {
  private waiting: (() => void)[] = [];
  private running: Running | undefined;
  /** A job runs or has been handed the turn (between one job's end and the next one's start, running is unset). */
  private busy = false;
  /** The last job ended and none waited: collectIfIdle has work. */
  private emptied = false;
  private closed = false;
  private jobs = 0;
  private listeners = new Set<Listener>();
  /** Steps run after an interrupt was asked for, per interrupted job (the last one): the bench's "stops within one step". */
  lastInterrupt: { stepsAfter: number } | undefined;

  /** `onIdle` is what collectIfIdle runs (default: a full garbage collection). */
  constructor(readonly capacity: number, private readonly onIdle: () => void = collectGarbage) {}

  /** Run `work` when its turn comes; rejects with QueueFullError when `capacity` jobs are already waiting. */
  async submit<T>(label: string, work: (ctx: JobContext) => Promise<T>): Promise<T> {
    if (this.closed) throw new ShuttingDownError();
    if (this.busy) {
      if (this.waiting.length >= this.capacity) throw new QueueFullError(this.capacity);
      await new Promise<void>((resolve) => this.waiting.push(resolve));
      if (this.closed) {
        this.handOn();
        throw new ShuttingDownError();
      }
    }
    this.busy = true;
    this.emptied = false;
    const job: Running = { label, startedAt: Date.now(), fraction: 0, step: 0, steps: 0, version: 0, interrupted: false };
    this.running = job;
    this.jobs++;
    this.emit();
    let after = 0;
    const ctx: JobContext = {
      step: (fraction, step, steps, preview) => {
        if (job.interrupted) {
          after++;
          this.lastInterrupt = { stepsAfter: after };
          throw new InterruptedError();
        }
        Object.assign(job, { fraction, step, steps, preview, version: job.version + 1 });
        this.emit();
      },
    };
    try {
      return await work(ctx);
    } finally {
      if (job.interrupted && after === 0) this.lastInterrupt = { stepsAfter: 0 };
      this.running = undefined;
      this.handOn();
      this.emit();
    }
  }

  /** The turn goes to the next waiting job, or nobody. */
  private handOn(): void {
    const next = this.waiting.shift();
    if (next) next();
    else {
      this.busy = false;
      this.emptied = true;
    }
  }

  /**
   * Once the queue has emptied, run `onIdle` (once): give back what the finished jobs left for the collector, as web
   * UIs free memory after a generation. The server calls it after a response is sent, so no answer waits for it.
   */
  collectIfIdle(): void {
    if (!this.emptied || this.busy) return;
    this.emptied = false;
    this.onIdle();
  }

  /** Refuse new jobs, turn the waiting ones away (ShuttingDownError) and interrupt the running one. */
  close(): void {
    this.closed = true;
    this.interrupt();
    this.handOn();
  }

  /** Ask the running job to stop at its next step; false when nothing runs. */
  interrupt(): boolean {
    if (!this.running) return false;
    this.running.interrupted = true;
    this.emit();
    return true;
  }

  snapshot(): JobSnapshot {
    const r = this.running;
    return {
      jobNo: this.jobs, queued: this.waiting.length,
      ...(r ? { running: { label: r.label, startedAt: r.startedAt, fraction: r.fraction, step: r.step, steps: r.steps, version: r.version, interrupted: r.interrupted } } : {}),
    };
  }

  /** The running job's preview at this moment, when it reported one. */
  preview(): HostTensor | undefined {
    return this.running?.preview?.();
  }

  /** Told of every change (start, step, end, interrupt); returns the unsubscribe. */
  subscribe(fn: Listener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private emit(): void {
    if (!this.listeners.size) return;
    const s = this.snapshot();
    for (const fn of this.listeners) fn(s);
  }
}
