#!/usr/bin/env node
/**
 * Drives the page of a running `ldm serve` in headless Chromium (Debian's /usr/bin/chromium, or CHROMIUM) the way a
 * person would: types a prompt, clicks Generate, watches the live preview, and waits for the image in the gallery.
 * Speaks the DevTools protocol over --remote-debugging-pipe (no WebSocket library needed). Exit 0 when the preview
 * changed at least twice and the gallery ends with a loaded image of the prompt, 1 when not, 2 when the check could
 * not run. --screenshot writes a PNG of the page at the end.
 *
 *   node scripts/check-serve-page.mjs --url http://127.0.0.1:7860 [--prompt "a red circle"] [--steps 40]
 *       [--size 16] [--screenshot docs/serve-page.png] [--json]
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Buffer } from 'node:buffer';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' }, prompt: { type: 'string', default: 'a red circle' }, steps: { type: 'string', default: '40' },
    size: { type: 'string', default: '16' }, screenshot: { type: 'string' }, json: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '120' },
  },
});
const browser = process.env.CHROMIUM ?? '/usr/bin/chromium';

class CheckError extends Error {}
const fail = (m) => {
  throw new CheckError(m);
};

/** A DevTools session over the pipe: fd 3 to the browser, fd 4 from it, messages separated by NUL. */
function devtools(proc) {
  let id = 0;
  const pending = new Map();
  const listeners = [];
  let buf = '';
  proc.stdio[4].on('data', (chunk) => {
    buf += chunk.toString('utf8');
    for (let i = buf.indexOf('\0'); i >= 0; i = buf.indexOf('\0')) {
      const msg = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      if (msg.id !== undefined && pending.has(msg.id)) {
        const { resolve, reject } = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) reject(new CheckError(`${msg.error.message}`));
        else resolve(msg.result);
      } else for (const l of listeners) l(msg);
    }
  });
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const msg = { id: ++id, method, params, ...(sessionId ? { sessionId } : {}) };
    pending.set(msg.id, { resolve, reject });
    proc.stdio[3].write(`${JSON.stringify(msg)}\0`);
  });
  return { send, on: (fn) => listeners.push(fn) };
}

async function check(work) {
  if (!opt.url) fail('usage: node scripts/check-serve-page.mjs --url http://127.0.0.1:7860 [--screenshot out.png] [--json]');
  if (!fs.existsSync(browser)) fail(`${browser} not found; install Debian's chromium (apt-get install chromium) or set CHROMIUM`);
  const proc = spawn(browser, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--no-default-browser-check', `--user-data-dir=${path.join(work, 'profile')}`, '--remote-debugging-pipe', 'about:blank',
  ], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
  const exited = new Promise((r) => proc.on('exit', r));
  try {
    const cdp = devtools(proc);
    const { targetInfos } = await cdp.send('Target.getTargets');
    const page = targetInfos.find((t) => t.type === 'page') ?? fail(`no page in ${browser}; its stderr ends: ${stderr.split('\n').slice(-3).join(' | ')}`);
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId: page.targetId, flatten: true });
    const s = (method, params) => cdp.send(method, params, sessionId);
    const evaluate = async (expression) => {
      const r = await s('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true });
      if (r.exceptionDetails) fail(`page script failed: ${r.exceptionDetails.exception?.description ?? r.exceptionDetails.text}`);
      return r.result.value;
    };
    const until = async (what, expression, seconds = Number(opt.timeout)) => {
      const end = Date.now() + seconds * 1000;
      for (;;) {
        const v = await evaluate(expression);
        if (v) return v;
        if (Date.now() > end) fail(`timed out waiting for ${what}`);
        await sleep(50);
      }
    };
    await s('Page.enable');
    await s('Runtime.enable');
    await s('Emulation.setDeviceMetricsOverride', { width: 1200, height: 860, deviceScaleFactor: 1, mobile: false });
    await s('Page.navigate', { url: opt.url });
    await until('the page to load its samplers', `document.querySelectorAll('#sampler option').length > 0`, 30);

    // Count every distinct preview the page shows from now on.
    await evaluate(`window.__previews = new Set(); new MutationObserver(() => window.__previews.add(document.getElementById('preview').src))
      .observe(document.getElementById('preview'), { attributes: true, attributeFilter: ['src'] }); true`);
    const galleryBefore = await evaluate(`document.querySelectorAll('#gallery figure').length`);
    // Type the prompt as keystrokes would, and the numbers into their fields.
    await evaluate(`document.getElementById('prompt').focus(); true`);
    await s('Input.insertText', { text: opt.prompt });
    await evaluate(`for (const [id, v] of [['steps', ${Number(opt.steps)}], ['width', ${Number(opt.size)}], ['height', ${Number(opt.size)}], ['seed', 7]]) document.getElementById(id).value = v;
      document.getElementById('sampler').value = 'Euler a'; true`);
    const box = await evaluate(`(() => { const r = document.getElementById('generate').getBoundingClientRect(); return { x: r.x + r.width / 2, y: r.y + r.height / 2 }; })()`);
    for (const type of ['mousePressed', 'mouseReleased']) await s('Input.dispatchMouseEvent', { type, x: box.x, y: box.y, button: 'left', clickCount: 1 });

    const typed = await evaluate(`document.getElementById('prompt').value`);
    await until('the image in the gallery', `(() => {
      const figs = [...document.querySelectorAll('#gallery figure')];
      const img = figs[0]?.querySelector('img');
      return figs.length > ${galleryBefore} && !document.getElementById('generate').disabled && img.complete && img.naturalWidth > 0
        && figs[0].querySelector('figcaption').textContent.includes(${JSON.stringify(opt.prompt)});
    })()`);
    const v = await evaluate(`({ previews: window.__previews.size, gallery: document.querySelectorAll('#gallery figure').length,
      caption: document.querySelector('#gallery figcaption').textContent, error: document.getElementById('error').textContent })`);
    if (opt.screenshot) {
      const { data } = await s('Page.captureScreenshot', { format: 'png' });
      fs.mkdirSync(path.dirname(path.resolve(opt.screenshot)), { recursive: true });
      fs.writeFileSync(opt.screenshot, Buffer.from(data, 'base64'));
    }
    const ok = typed === opt.prompt && v.previews >= 2 && v.error === '';
    const verdict = { url: opt.url, typed, ...v, ok, ...(opt.screenshot ? { screenshot: opt.screenshot } : {}) };
    if (opt.json) process.stdout.write(`${JSON.stringify(verdict)}\n`);
    else process.stdout.write(`${opt.url}: typed "${typed}", ${v.previews} previews, ${v.gallery} images in the gallery${v.error ? `; error: ${v.error}` : ''}\n`);
    return ok ? 0 : 1;
  } finally {
    proc.kill();
    await exited;
  }
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-serve-page-'));
let code = 2;
try {
  code = await check(work);
} catch (err) {
  if (!(err instanceof CheckError)) throw err;
  process.stderr.write(`check-serve-page: ${err.message}\n`);
} finally {
  // Chromium's helper processes can still be writing the profile after the browser exits: retry the removal.
  fs.rmSync(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
}
process.exitCode = code;
