// The submit form: fields that follow the chosen workload type, requirements and placement,
// JSON submission, and data uploads (files or a whole directory) with a progress bar.

import {h, replace, setText} from './dom.js';
import {api, ApiError} from './api.js';
import * as fmt from './format.js';

const MiB = 1024 * 1024;

// One entry per workload type: the config fields its form shows.
// kind: text | number | select | lines (list of strings) | map (KEY=value lines) | words (split on spaces)
export const TYPE_FIELDS = {
  process: [
    {name: 'command', label: 'Command', required: true, placeholder: 'sleep'},
    {name: 'args', label: 'Arguments', kind: 'lines', hint: 'one per line', placeholder: '60'},
    {name: 'env', label: 'Environment', kind: 'map', hint: 'KEY=value, one per line'},
    {name: 'working_dir', label: 'Working directory', placeholder: '/tmp'},
  ],
  container: [
    {name: 'image', label: 'Image', required: true, placeholder: 'nginx:alpine'},
    {name: 'command', label: 'Command', kind: 'words', hint: 'split on spaces', placeholder: 'nginx -g "daemon off;"'},
    {name: 'args', label: 'Arguments', kind: 'lines', hint: 'one per line'},
    {name: 'ports', label: 'Ports', kind: 'lines', hint: 'host:container, one per line', placeholder: '8080:80'},
    {name: 'volumes', label: 'Volumes', kind: 'lines', hint: '/host/dir:/in/container[:ro], one per line',
      placeholder: '/srv/data:/data:ro'},
    {name: 'env', label: 'Environment', kind: 'map', hint: 'KEY=value, one per line'},
    {name: 'working_dir', label: 'Working directory', hint: 'inside the container', placeholder: '/app'},
  ],
  mlmodel: [
    {name: 'model_type', label: 'Model type', kind: 'select', options: ['yolo', 'tensorflow', 'pytorch']},
    {name: 'model_path', label: 'Model path', required: true, placeholder: 'models/yolo11n.onnx'},
    {name: 'service_port', label: 'Service port', kind: 'number', required: true, placeholder: '9001'},
  ],
  opencv: [
    {name: 'cascade_type', label: 'Cascade', kind: 'select', options: ['face', 'eye', 'smile']},
    {name: 'service_port', label: 'Service port', kind: 'number', required: true, placeholder: '9000'},
  ],
  datagateway: [
    {name: 'service_port', label: 'Service port', kind: 'number', required: true, placeholder: '9091'},
    {name: 'service_host', label: 'Service host', placeholder: '127.0.0.1'},
    {name: 'base_path', label: 'Base path', placeholder: '/tmp/cnet_data'},
    {name: 'bucket', label: 'Bucket', placeholder: 'cnet'},
  ],
  data: [],
};

class FormError extends Error {}

function parseLines(text) {
  return text.split('\n').map((l) => l.replace(/\r$/, '')).filter((l) => l.trim() !== '');
}

function parseMap(text, label) {
  const out = {};
  parseLines(text).forEach((line, i) => {
    const at = line.indexOf('=');
    if (at <= 0) throw new FormError(`${label}, line ${i + 1}: expected KEY=value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1);
  });
  return out;
}

/** Split a command line on spaces, keeping "quoted parts" together. */
function parseWords(text) {
  const words = [];
  const re = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let m;
  while ((m = re.exec(text)) !== null) words.push(m[1] ?? m[2] ?? m[3]);
  return words;
}

export class SubmitForm {
  /**
   * @param form the <form> element
   * @param hooks {onSubmitted(workload), onError(err)}
   */
  constructor(form, hooks) {
    this.form = form;
    this.hooks = hooks;
    this.typeSelect = form.querySelector('#f-type');
    this.fieldsBox = form.querySelector('#type-fields');
    this.message = form.querySelector('#form-message');
    this.button = form.querySelector('#submit-button');
    this.preview = form.querySelector('#preview');
    this.previewButton = form.querySelector('#preview-button');
    this.progress = form.querySelector('#upload-progress');
    this.progressBar = form.querySelector('#upload-bar');
    this.progressFill = form.querySelector('#upload-fill');
    this.progressText = form.querySelector('#upload-text');
    this.typeSelect.addEventListener('change', () => this.showType());
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    form.addEventListener('input', () => this.updatePreview());
    this.previewButton.addEventListener('click', () => {
      this.preview.hidden = !this.preview.hidden;
      this.previewButton.setAttribute('aria-expanded', String(!this.preview.hidden));
      setText(this.previewButton, this.preview.hidden ? 'Show JSON' : 'Hide JSON');
      this.updatePreview();
    });
    this.showType();
  }

  get type() {
    return this.typeSelect.value;
  }

  showType() {
    const type = this.type;
    const isData = type === 'data';
    const fields = TYPE_FIELDS[type] || [];
    const nodes = fields.map((f) => this.fieldFor(type, f));
    if (isData) nodes.push(...this.dataFields());
    replace(this.fieldsBox, ...nodes);
    // A data upload is stored on this node; requirements and placement do not apply.
    for (const id of ['#req-group', '#place-group']) {
      const group = this.form.querySelector(id);
      group.disabled = isData;
      group.classList.toggle('is-disabled', isData);
    }
    const name = this.form.querySelector('#f-name');
    name.placeholder = isData ? 'my-dataset' : `${type}-1`;
    setText(this.button, isData ? 'Upload' : 'Submit');
    this.setMessage('');
    this.updatePreview();
  }

  fieldFor(type, f) {
    const id = `cfg-${type}-${f.name}`;
    let control;
    if (f.kind === 'select') {
      control = h('select', {id, name: f.name}, f.options.map((o) => h('option', {value: o}, o)));
    } else if (f.kind === 'lines' || f.kind === 'map') {
      control = h('textarea', {id, name: f.name, rows: 2, placeholder: f.placeholder || null});
    } else {
      control = h('input', {id, name: f.name, autocomplete: 'off', placeholder: f.placeholder || null,
        type: f.kind === 'number' ? 'number' : 'text', min: f.kind === 'number' ? 1 : null,
        max: f.kind === 'number' ? 65535 : null, required: f.required || null});
    }
    control.dataset.config = f.name;
    control.dataset.kind = f.kind || 'text';
    return h('label', {class: 'field', for: id},
      h('span', {}, f.label, f.required ? h('span', {class: 'req', 'aria-hidden': 'true'}, ' *') : null,
        f.hint ? h('small', {}, ` (${f.hint})`) : null),
      control);
  }

  dataFields() {
    const files = h('input', {type: 'file', id: 'f-files', name: 'files', multiple: true});
    const dir = h('input', {type: 'file', id: 'f-dir', name: 'directory', webkitdirectory: true, multiple: true});
    const summary = h('p', {class: 'small muted', id: 'f-files-summary', 'aria-live': 'polite'}, 'Nothing chosen yet.');
    const update = (source) => {
      // The two pickers are alternatives: choosing one clears the other.
      const other = source === files ? dir : files;
      if (source.files.length) other.value = '';
      const chosen = this.chosenFiles();
      const total = chosen.reduce((s, f) => s + f.size, 0);
      setText(summary, chosen.length
        ? `${chosen.length} file${chosen.length > 1 ? 's' : ''}, ${fmt.bytes(total)}` +
          (chosen.length <= 5 ? `: ${chosen.map((f) => f.webkitRelativePath || f.name).join(', ')}` : '')
        : 'Nothing chosen yet.');
      const nameInput = this.form.querySelector('#f-name');
      if (!nameInput.value && chosen.length) {
        const first = chosen[0].webkitRelativePath || chosen[0].name;
        nameInput.value = first.includes('/') ? first.split('/')[0] : first;
      }
      this.updatePreview();
    };
    files.addEventListener('change', () => update(files));
    dir.addEventListener('change', () => update(dir));
    return [
      h('label', {class: 'field', for: 'f-files'}, h('span', {}, 'Files'), files),
      h('label', {class: 'field', for: 'f-dir'}, h('span', {}, 'or a whole directory'), dir),
      summary,
    ];
  }

  chosenFiles() {
    const out = [];
    for (const id of ['#f-files', '#f-dir']) {
      const input = this.form.querySelector(id);
      if (input) out.push(...input.files);
    }
    return out;
  }

  /** The JSON body for a non-data type; throws FormError on a field that cannot be read. */
  buildSpec() {
    const type = this.type;
    const name = this.form.querySelector('#f-name').value.trim();
    if (!name) throw new FormError('Name: required');
    const config = {};
    for (const el of this.fieldsBox.querySelectorAll('[data-config]')) {
      const key = el.dataset.config;
      const label = el.closest('label')?.querySelector('span')?.firstChild?.textContent || key;
      const raw = el.value;
      if (raw.trim() === '') {
        if (el.required) throw new FormError(`${label}: required`);
        continue;
      }
      switch (el.dataset.kind) {
        case 'number': {
          const n = Number(raw);
          if (!Number.isInteger(n)) throw new FormError(`${label}: a whole number`);
          config[key] = n;
          break;
        }
        case 'lines': config[key] = parseLines(raw); break;
        case 'map': config[key] = parseMap(raw, label); break;
        case 'words': config[key] = parseWords(raw); break;
        default: config[key] = raw.trim();
      }
    }
    const spec = {name, type, config};
    const requirements = {};
    const cpu = this.form.querySelector('#f-cpu').value;
    const mem = this.form.querySelector('#f-memory').value;
    const gpu = this.form.querySelector('#f-gpu').value;
    const storage = this.form.querySelector('#f-storage').value;
    if (cpu !== '') requirements.cpu = Number(cpu);
    if (mem !== '') requirements.memory = Math.round(Number(mem) * MiB);
    if (gpu !== '') requirements.gpu = Number(gpu);
    if (storage !== '') requirements.storage = Math.round(Number(storage) * MiB);
    for (const [k, v] of Object.entries(requirements)) {
      if (!Number.isFinite(v)) throw new FormError(`Requirements: ${k} must be a number`);
    }
    if (Object.keys(requirements).length) spec.requirements = requirements;
    const placement = {};
    const strategy = this.form.querySelector('#f-strategy').value;
    const node = this.form.querySelector('#f-node').value.trim();
    const selector = parseMap(this.form.querySelector('#f-selector').value, 'Node selector');
    if (strategy) placement.strategy = strategy;
    if (node) placement.node = node;
    if (Object.keys(selector).length) placement.node_selector = selector;
    if (Object.keys(placement).length) spec.placement = placement;
    return spec;
  }

  updatePreview() {
    if (this.preview.hidden) return;
    let text;
    try {
      if (this.type === 'data') {
        const files = this.chosenFiles().map((f) => f.webkitRelativePath || f.name);
        text = `multipart/form-data\n  type=data\n  name=${this.form.querySelector('#f-name').value}\n` +
          files.map((f) => `  file=@${f}`).join('\n');
      } else {
        text = JSON.stringify(this.buildSpec(), null, 2);
      }
    } catch (err) {
      text = `(${err.message})`;
    }
    setText(this.preview, text);
  }

  setMessage(text, kind = '') {
    this.message.className = `form-message ${kind}`.trim();
    setText(this.message, text);
  }

  async submit() {
    if (this.busy) return;
    this.busy = true;
    this.button.disabled = true;
    try {
      const wl = this.type === 'data' ? await this.upload() : await this.submitJson();
      if (wl) {
        this.setMessage(`Submitted ${wl.name} (${wl.id}) — ${wl.status}${wl.node_id ? ` on ${wl.node_id}` : ''}.`, 'ok');
        this.hooks.onSubmitted(wl);
      }
    } catch (err) {
      const prefix = err instanceof ApiError && err.status ? `${err.status} ${err.code}: ` : '';
      this.setMessage(`${prefix}${err.message}`, 'error');
      if (!(err instanceof FormError)) this.hooks.onError?.(err);
    } finally {
      this.busy = false;
      this.button.disabled = false;
    }
  }

  async submitJson() {
    const spec = this.buildSpec();
    this.setMessage('Submitting…');
    return api.submit(spec);
  }

  async upload() {
    const name = this.form.querySelector('#f-name').value.trim();
    if (!name) throw new FormError('Name: required');
    const files = this.chosenFiles();
    if (!files.length) throw new FormError('Choose a file or a directory to upload');
    const body = new FormData();
    body.append('type', 'data');
    body.append('name', name);
    for (const f of files) body.append('file', f, f.webkitRelativePath || f.name);
    const total = files.reduce((s, f) => s + f.size, 0);
    this.setMessage(`Uploading ${files.length} file${files.length > 1 ? 's' : ''} (${fmt.bytes(total)})…`);
    this.showProgress(0, total);
    let sent = total;
    try {
      const wl = await api.upload(body, (loaded, all) => {
        sent = all;
        this.showProgress(loaded, all);
      });
      this.showProgress(sent, sent);
      return wl;
    } catch (err) {
      this.progress.classList.add('failed');
      throw err;
    }
  }

  showProgress(loaded, total) {
    this.progress.hidden = false;
    this.progress.classList.remove('failed');
    const p = total > 0 ? Math.round((100 * loaded) / total) : 0;
    this.progressFill.style.width = `${p}%`;
    this.progressBar.setAttribute('aria-valuenow', String(p));
    setText(this.progressText, `${p}% · ${fmt.bytes(loaded)} of ${fmt.bytes(total)}`);
  }

  /** Offer the known node ids in the "Pin to node" field. */
  setNodeOptions(ids) {
    const list = this.form.querySelector('#node-options');
    const key = ids.join('\n');
    if (list.dataset.key === key) return;
    list.dataset.key = key;
    replace(list, ...ids.map((id) => h('option', {value: id})));
  }
}
