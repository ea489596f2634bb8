/* global document, localStorage, fetch, Option, EventSource, FileReader */
// The page of ldm serve: plain ES module, no build step. It speaks the same /sdapi/v1 API as any client, and listens to
// /ldm/events (Server-Sent Events) for progress and previews.
const $ = (id) => document.getElementById(id);
let key = localStorage.getItem('ldm-key') ?? '';
let dropped = null; // base64 of the dropped image, without the data: prefix

function headers() {
  return key ? { authorization: `Bearer ${key}` } : {};
}

async function api(method, url, body) {
  const json = body !== undefined ? { headers: { ...headers(), 'content-type': 'application/json' }, body: JSON.stringify(body) } : { headers: headers() };
  const res = await fetch(url, { method, ...json });
  if (res.status === 401) {
    $('key').hidden = false;
    throw new Error('this server needs an API key: type it in the box at the top');
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new Error(data?.detail ?? `${res.status} ${res.statusText}`);
  return data;
}

function fail(err) {
  $('error').textContent = err.message;
}

async function loadChoices() {
  const [models, options, samplers, upscalers] = await Promise.all([
    api('GET', '/sdapi/v1/sd-models'), api('GET', '/sdapi/v1/options'), api('GET', '/sdapi/v1/samplers'), api('GET', '/sdapi/v1/upscalers'),
  ]);
  $('model').replaceChildren(...models.map((m) => new Option(m.title, m.title, false, m.title === options.sd_model_checkpoint)));
  $('sampler').replaceChildren(...samplers.flatMap((s) => [s.name, ...s.aliases.slice(1)]).map((n) => new Option(n, n)));
  $('upscaler').replaceChildren(...upscalers.filter((u) => u.name !== 'None').map((u) => new Option(u.name, u.name)));
}

async function loadGallery() {
  const items = await api('GET', '/ldm/gallery');
  $('gallery').replaceChildren(...items.map((g) => {
    const fig = document.createElement('figure');
    fig.dataset.id = String(g.id);
    const img = document.createElement('img');
    img.src = `/ldm/images/${g.id}.png`;
    img.alt = g.parameters.split('\n')[0];
    const cap = document.createElement('figcaption');
    cap.textContent = `#${g.id} ${g.kind} ${g.width}x${g.height}\n${g.parameters}`;
    fig.append(img, cap);
    return fig;
  }));
}

function listen() {
  const src = new EventSource(`/ldm/events${key ? `?key=${encodeURIComponent(key)}` : ''}`);
  let gallerySize = -1;
  src.onmessage = (ev) => {
    const s = JSON.parse(ev.data);
    $('progress').value = s.progress;
    $('status').textContent = s.running
      ? `${s.state.job}: step ${s.state.sampling_step}/${s.state.sampling_steps}, ${Math.round(s.progress * 100)}%, ETA ${s.eta_relative.toFixed(1)} s${s.state.queued ? `, ${s.state.queued} waiting` : ''}`
      : 'idle';
    if (s.current_image) $('preview').src = `data:image/png;base64,${s.current_image}`;
    if (s.gallery_size !== gallerySize) {
      gallerySize = s.gallery_size;
      loadGallery().catch(fail);
    }
  };
}

function request() {
  return {
    prompt: $('prompt').value, negative_prompt: $('negative').value, sampler_name: $('sampler').value,
    steps: Number($('steps').value), cfg_scale: Number($('guidance').value), seed: Number($('seed').value),
    width: Number($('width').value), height: Number($('height').value),
  };
}

async function generate(ev) {
  ev.preventDefault();
  $('error').textContent = '';
  $('generate').disabled = true;
  try {
    const body = request();
    if (dropped) await api('POST', '/sdapi/v1/img2img', { ...body, init_images: [dropped], denoising_strength: Number($('strength').value) });
    else await api('POST', '/sdapi/v1/txt2img', body);
    await loadGallery();
  } catch (err) {
    fail(err);
  } finally {
    $('generate').disabled = false;
  }
}

async function upscale() {
  $('error').textContent = '';
  try {
    await api('POST', '/sdapi/v1/extra-single-image', { image: dropped, upscaler_1: $('upscaler').value, upscaling_resize: Number($('factor').value) });
    await loadGallery();
  } catch (err) {
    fail(err);
  }
}

function takeFile(file) {
  const reader = new FileReader();
  reader.onload = () => {
    const url = String(reader.result);
    dropped = url.replace(/^data:[^,]*,/, '');
    $('dropped').src = url;
    $('dropped').hidden = false;
    $('image-tools').hidden = false;
  };
  reader.readAsDataURL(file);
}

function setupDrop() {
  const zone = $('drop');
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const file = e.dataTransfer?.files?.[0];
    if (file) takeFile(file);
  });
  $('clear').onclick = () => {
    dropped = null;
    $('dropped').hidden = true;
    $('image-tools').hidden = true;
  };
}

$('key').value = key;
$('key').onchange = () => {
  key = $('key').value;
  localStorage.setItem('ldm-key', key);
  loadChoices().then(loadGallery).catch(fail);
  listen();
};
$('model').onchange = () => api('POST', '/sdapi/v1/options', { sd_model_checkpoint: $('model').value }).catch(fail);
$('form').onsubmit = generate;
$('interrupt').onclick = () => api('POST', '/sdapi/v1/interrupt').catch(fail);
$('upscale').onclick = upscale;
setupDrop();
loadChoices().then(loadGallery).catch(fail);
listen();
