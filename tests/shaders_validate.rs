//! Every shader variant parses, validates and translates to Metal Shading Language with naga,
//! without a GPU: the portable variant under no optional capabilities (plain WebGPU), and the
//! `shader-f16` / subgroup variants with exactly those capabilities. This is what proves the
//! kernels compile for Apple GPUs on a machine that has none.

use gemma_wgpu::gpu::Caps;
use gemma_wgpu::kernels::all_specs;
use naga::back::msl;
use naga::valid::{Capabilities, ShaderStages, SubgroupOperationSet, ValidationFlags, Validator};

#[test]
fn every_variant_validates_and_translates_to_msl() {
    let mut specs = all_specs();
    specs.push(gemma_wgpu::bench::kernels::copy_spec());
    specs.push(gemma_wgpu::bench::kernels::tick_spec());
    assert!(!specs.is_empty());
    let mut checked = 0;
    let mut failures = Vec::new();
    for spec in &specs {
        let variants = [(false, false), (true, false), (false, true), (true, true)];
        for (f16, subgroups, uniform) in variants
            .into_iter()
            .flat_map(|(f, s)| [(f, s, true), (f, s, false)])
        {
            let label = format!(
                "{} [f16 {f16}, subgroups {subgroups}, uniform params {uniform}]",
                spec.name
            );
            let caps = Caps {
                uniform_params: uniform,
                ..Caps::webgpu_defaults(f16, subgroups)
            };
            if !spec.runs_on(&caps) {
                continue;
            }
            let text = match spec.expand(&caps) {
                Ok(t) => t,
                Err(e) => {
                    failures.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let module = match naga::front::wgsl::parse_str(&text) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{label}: parse: {}", e.emit_to_string(&text)));
                    continue;
                }
            };
            // pack/unpack2x16float are core WGSL; naga lists them as a capability because
            // some of its other targets lack them. Every WebGPU implementation has them.
            let mut naga_caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
            if f16 {
                naga_caps |= Capabilities::SHADER_FLOAT16;
            }
            if subgroups {
                naga_caps |= Capabilities::SUBGROUP;
            }
            let mut validator = Validator::new(ValidationFlags::all(), naga_caps);
            if subgroups {
                validator.subgroup_stages(ShaderStages::COMPUTE);
                validator.subgroup_operations(SubgroupOperationSet::all());
            }
            let info = match validator.validate(&module) {
                Ok(i) => i,
                Err(e) => {
                    failures.push(format!("{label}: validate: {}", e.emit_to_string(&text)));
                    continue;
                }
            };
            let options = msl::Options {
                lang_version: (2, 4),
                ..Default::default()
            };
            match msl::write_string(&module, &info, &options, &msl::PipelineOptions::default()) {
                Ok((msl_text, _)) => {
                    assert!(
                        msl_text.contains("kernel void"),
                        "{label}: no kernel in MSL"
                    );
                    checked += 1;
                }
                Err(e) => failures.push(format!("{label}: msl: {e}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} shader variants validated and translated to MSL");
}
