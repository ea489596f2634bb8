import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Program } from '../src/engine/executor.js';
import { ProgramCache } from '../src/engine/program-cache.js';

function fakeProgram(log: string[], name: string): Program {
  return {
    inputNames: [], outputNames: [],
    run: () => Promise.resolve({}),
    dispose: () => {
      log.push(`dispose ${name}`);
      return Promise.resolve();
    },
  };
}

test('program cache: one compile per key, a failed compile is retried, dispose releases each program once', async () => {
  const log: string[] = [];
  const cache = new ProgramCache();
  let compiles = 0;
  const make = (name: string) => () => {
    compiles++;
    return Promise.resolve(fakeProgram(log, name));
  };
  const a1 = cache.get('a', make('a'));
  const a2 = cache.get('a', make('a again'));
  assert.equal(a1, a2);
  await cache.get('b', make('b'));
  assert.equal(compiles, 2);

  await assert.rejects(cache.get('c', () => Promise.reject(new Error('no such op'))), /no such op/);
  await Promise.resolve();
  assert.equal(cache.size, 2, 'the failed compile is forgotten');
  await cache.get('c', make('c'));
  assert.equal(compiles, 3);

  assert.throws(() => cache.get('d', () => { throw new Error('trace failed'); }), /trace failed/);
  assert.equal(cache.size, 3);

  await cache.dispose();
  assert.deepEqual(log.sort(), ['dispose a', 'dispose b', 'dispose c']);
  assert.equal(cache.size, 0);
  await cache.dispose();
  assert.equal(log.length, 3, 'a second dispose releases nothing again');
});
