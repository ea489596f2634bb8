#!/usr/bin/env node
/**
 * Opens a report.html in headless Chromium (Debian's /usr/bin/chromium, or CHROMIUM) and checks that every <img>
 * loaded: complete with a natural width above zero. A copy of the page gets a script that writes the verdict into
 * the DOM after the load event; `--dump-dom` prints that DOM. Exit 0 when every image loaded, 1 when one did not,
 * 2 when the check could not run.
 *
 *   node scripts/check-report.mjs study/report.html [--json]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const args = process.argv.slice(2);
const json = args.includes('--json');
const file = args.find((a) => !a.startsWith('--'));
const browser = process.env.CHROMIUM ?? '/usr/bin/chromium';

class CheckError extends Error {}

function fail(message) {
  throw new CheckError(message);
}


const MARK = 'report-check-verdict';
const probe = `<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt || i.src.slice(0, 60));
  const v = { images: imgs.length, loaded: imgs.length - broken.length, broken, sizes: imgs.map((i) => [i.naturalWidth, i.naturalHeight]) };
  const pre = document.createElement('pre');
  pre.id = '${MARK}';
  pre.textContent = JSON.stringify(v);
  document.body.appendChild(pre);
});
</script>`;

/** The verdict's exit code: 0 every image loaded, 1 one did not. */
function check(work) {
  if (!file) fail('usage: node scripts/check-report.mjs <report.html> [--json]');
  if (!fs.existsSync(file)) fail(`${file} not found`);
  if (!fs.existsSync(browser)) fail(`${browser} not found; install Debian's chromium (apt-get install chromium) or set CHROMIUM`);
  const html = fs.readFileSync(file, 'utf8');
  const page = path.join(work, 'report.html');
  // Copied away from its folder on purpose: a self-contained report loads with nothing beside it.
  fs.writeFileSync(page, html.includes('</body>') ? html.replace('</body>', `${probe}</body>`) : html + probe);
  const r = spawnSync(browser, [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--no-default-browser-check', `--user-data-dir=${path.join(work, 'profile')}`,
    '--virtual-time-budget=10000', '--dump-dom', pathToFileURL(page).href,
  ], { encoding: 'utf8', timeout: 120_000, maxBuffer: 256 * 1024 * 1024 });
  if (r.error) fail(`could not run ${browser}: ${r.error.message}`);
  const m = new RegExp(`<pre id="${MARK}">([^<]*)</pre>`).exec(r.stdout ?? '');
  if (!m) fail(`${browser} exited ${r.status} without the verdict; its stderr ends: ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}`);
  const text = m[1].replace(/&quot;/g, '"').replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  const v = JSON.parse(text);
  const ok = v.images > 0 && v.broken.length === 0;
  if (json) process.stdout.write(`${JSON.stringify({ file, ...v, ok })}\n`);
  else process.stdout.write(`${file}: ${v.loaded} of ${v.images} images loaded${v.broken.length ? `; broken: ${v.broken.join(', ')}` : ''}\n`);
  return ok ? 0 : 1;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ldm-report-check-'));
let code = 2;
try {
  code = check(work);
} catch (err) {
  if (!(err instanceof CheckError)) throw err;
  process.stderr.write(`check-report: ${err.message}\n`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
process.exitCode = code;
