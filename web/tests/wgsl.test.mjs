// Every WGSL kernel variant the wasm build can use, compiled by Chrome's WebGPU implementation
// (Dawn and its Tint compiler, through npm `webgpu`): the module must compile without errors and
// its compute pipelines must pass validation under WebGPU's default limits, on a device with
// exactly the features the variant claims to need (`subgroups` for the subgroup variants, whose
// code must carry `enable subgroups;` as the browser build writes it).
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { create } from 'webgpu';
import { packedPackage, record, secs } from './helpers/setup.mjs';

const note = (line) => console.log(record(import.meta.filename, line));

// Tried in order; the first adapter that has a variant's features validates it. Without a GPU
// (CI), only Dawn's null backend is there: it runs the whole front end (Tint's parser, resolver
// and validation, and Dawn's pipeline and layout checks) but generates no machine code. Code
// generation for real is covered by the browser tests, for the kernels the models use (compiling
// all 322 variants SwiftShader can run takes minutes).
const ADAPTER_OPTIONS = [[], ['backend=null']];

let variants;
let adapters;

before(async () => {
  const pkg = await packedPackage();
  const wasmDir = path.join(pkg.dir, 'wasm');
  const bindings = await import(pathToFileURL(path.join(wasmDir, 'gemma_wgpu.js')).href);
  await bindings.default({ module_or_path: readFileSync(path.join(wasmDir, 'gemma_wgpu_bg.wasm')) });
  variants = bindings.shaderVariants();

  adapters = [];
  for (const options of ADAPTER_OPTIONS) {
    const gpu = create(options);
    const adapter = await gpu.requestAdapter().catch(() => null);
    if (!adapter) continue;
    const info = adapter.info ?? {};
    adapters.push({
      gpu,
      options,
      label: `${info.description || info.device || info.architecture || 'adapter'} [${options.join(' ') || 'default'}]`,
      features: new Set(adapter.features),
    });
  }
});

/** Compute entry points: functions whose attributes include @compute. */
function entryPoints(code) {
  const out = [];
  for (const m of code.matchAll(/((?:@[A-Za-z_]\w*(?:\s*\([^)]*\))?\s*)+)fn\s+([A-Za-z_]\w*)/g)) {
    if (/@compute\b/.test(m[1])) out.push(m[2]);
  }
  return out;
}

async function validate(device, variant) {
  const errors = [];
  device.pushErrorScope('validation');
  device.pushErrorScope('internal');
  const module = device.createShaderModule({ code: variant.code, label: variant.name });
  const info = await module.getCompilationInfo();
  for (const m of info.messages) {
    if (m.type === 'error') errors.push(`${m.lineNum}:${m.linePos} ${m.message}`);
  }
  const entries = entryPoints(variant.code);
  if (entries.length === 0) errors.push('no @compute entry point');
  for (const entryPoint of entries) {
    device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint }, label: `${variant.name}:${entryPoint}` });
  }
  const internal = await device.popErrorScope();
  const validation = await device.popErrorScope();
  if (internal) errors.push(`internal: ${internal.message}`);
  if (validation) errors.push(`validation: ${validation.message}`);
  return { errors, entries };
}

/** Fails with one line per kernel and distinct first error, then the first failure in full. */
function reportFailures(failures, total) {
  if (!failures.length) return;
  const lines = new Map();
  for (const f of failures) {
    const key = `${f.name}: ${f.errors[0]}`;
    lines.set(key, (lines.get(key) ?? 0) + 1);
  }
  const summary = [...lines].map(([k, n]) => `  ${k} (${n} variant${n > 1 ? 's' : ''})`).join('\n');
  assert.fail(
    `${failures.length} of ${total} variants failed:\n${summary}\n\nfirst failure, ${failures[0].tag}:\n` +
      failures[0].errors.join('\n'),
  );
}

test('every shader variant compiles and its pipelines validate', { timeout: 300_000 }, async () => {
  assert.ok(Array.isArray(variants) && variants.length > 0, 'shaderVariants() returned no variants');
  assert.ok(adapters.length > 0, 'no WebGPU adapter from dawn.node, not even the null backend');
  for (const v of variants) {
    assert.equal(typeof v.name, 'string');
    assert.equal(typeof v.code, 'string');
    assert.equal(typeof v.f16, 'boolean');
    assert.equal(typeof v.subgroups, 'boolean');
    // The browser build's directives: Tint wants `enable subgroups;` before any subgroup builtin
    // or attribute (naga, natively, rejects it), so exactly the subgroup variants carry it.
    const tag = `${v.name} (f16 ${v.f16}, subgroups ${v.subgroups})`;
    assert.equal(/^enable subgroups;$/m.test(v.code), v.subgroups, `${tag}: \`enable subgroups;\``);
    assert.equal(/^enable f16;$/m.test(v.code), v.f16, `${tag}: \`enable f16;\``);
  }
  // The subgroup variants really use subgroups (else this test would not cover those kernels).
  const subgroupCode = /\bsubgroup[A-Z]\w*\s*\(|@builtin\s*\(\s*subgroup_/;
  const usingSubgroups = variants.filter((v) => v.subgroups && subgroupCode.test(v.code));
  assert.ok(usingSubgroups.length > 0, 'no subgroup variant uses a subgroup builtin');
  assert.ok(
    variants.filter((v) => !v.subgroups).every((v) => !subgroupCode.test(v.code)),
    'a variant without subgroups uses a subgroup builtin',
  );

  const devices = new Map(); // "f16,subgroups" -> { device, label }
  const deviceFor = async (v) => {
    const key = `${v.f16},${v.subgroups}`;
    if (!devices.has(key)) {
      const needed = [...(v.f16 ? ['shader-f16'] : []), ...(v.subgroups ? ['subgroups'] : [])];
      const a = adapters.find((x) => needed.every((f) => x.features.has(f)));
      // An adapter gives out one device: ask for a fresh one each time.
      const adapter = a && (await a.gpu.requestAdapter());
      devices.set(key, a ? { device: await adapter.requestDevice({ requiredFeatures: needed }), label: a.label } : { missing: needed });
    }
    return devices.get(key);
  };

  const failures = [];
  const skipped = [];
  const validatedOn = new Map();
  let pipelines = 0;
  const t0 = performance.now();
  for (const v of variants) {
    const d = await deviceFor(v);
    const tag = `${v.name} (f16 ${v.f16}, subgroups ${v.subgroups})`;
    if (d.missing) {
      skipped.push(`${tag}: no adapter has ${d.missing.join(' + ')}`);
      continue;
    }
    const { errors, entries } = await validate(d.device, v);
    pipelines += entries.length;
    validatedOn.set(d.label, (validatedOn.get(d.label) ?? 0) + 1);
    if (errors.length) failures.push({ tag, name: v.name, errors });
  }
  for (const { device } of devices.values()) device?.destroy();
  note(
    `${variants.length} variants (${new Set(variants.map((v) => v.name)).size} kernels), ${pipelines} pipelines in ` +
      `${secs(performance.now() - t0)}; validated on ${[...validatedOn].map(([l, n]) => `${l}: ${n}`).join(', ')}; ` +
      `skipped ${skipped.length}; ${usingSubgroups.length} subgroup variants ` +
      `(${new Set(usingSubgroups.map((v) => v.name)).size} kernels) contain subgroup builtins`,
  );
  for (const s of skipped) note(`skipped ${s}`);
  reportFailures(failures, variants.length);
  // Every variant must have been checked: the null backend has every feature.
  assert.deepEqual(skipped, []);
});

