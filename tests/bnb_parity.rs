//! 8-bit state against bitsandbytes itself: `tools/bnb_blockwise.py` records short runs of
//! bitsandbytes' 8-bit optimizers (its CPU backend) in `tests/data/bnb_blockwise.json`, and
//! each is replayed here with `StateFormat::Blockwise8`. 8-bit codes flip under tiny
//! perturbations, so the bounds are set from how far bitsandbytes' own result moves when its
//! gradients are perturbed by 1e-6 relative (recorded with each case), and state agreement is
//! the fraction of codes equal to bitsandbytes'.
//!
//! bitsandbytes has two CPU kernels for the requantization, and each is recorded: its native
//! one (a 65536-bin table, what `bnb.optim.*8bit` runs on CPU) and its device-independent one
//! (the nearest code, as its CUDA kernels and this crate compute it), in
//! `tests/data/bnb_blockwise_nearest.json` (`--quantizer nearest`, the same inputs).

mod common;
use serde_json::Value;
use std::sync::OnceLock;
use wgpu_optim::blockwise::dynamic_map;
use wgpu_optim::{AdagradConfig, AdamConfig, LionConfig, RmsPropConfig, SgdConfig};
use wgpu_optim::{FusedOptimizer, Optimizer, OptimizerConfig, Params, QuantMap, StateFormat};

fn load(file: &str) -> Value {
    let path = format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path} (tools/bnb_blockwise.py writes it): {e}"));
    serde_json::from_str(&text).unwrap()
}

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| load("bnb_blockwise.json"))
}

/// Which of bitsandbytes' CPU requantization kernels a recording used.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Recorded {
    /// Its native CPU kernel: a table of 65536 bins ([`bnb_cpu_quantize`]).
    Native,
    /// Its device-independent kernel: the nearest code.
    Nearest,
}

impl Recorded {
    /// The recorded cases, each whole: the nearest-code file keeps only what differs from the
    /// native one (same seeds, so the same init and gradients), merged into the native case.
    fn cases(self) -> Vec<Value> {
        let native = fixture()["cases"].as_array().unwrap().clone();
        if self == Recorded::Native {
            return native;
        }
        let f = load("bnb_blockwise_nearest.json");
        assert_eq!(f["quantizer"], "nearest");
        assert_eq!(f["maps"], fixture()["maps"]);
        let results = f["cases"].as_array().unwrap();
        assert_eq!(results.len(), native.len(), "cases in the two recordings");
        native
            .into_iter()
            .zip(results)
            .map(|(mut case, r)| {
                assert_eq!((&case["name"], &case["seed"]), (&r["name"], &r["seed"]));
                let last = case["steps"].as_array_mut().unwrap().last_mut().unwrap();
                last["params"] = r["last_params"].clone();
                case["final_state"] = r["final_state"].clone();
                case["perturbation"] = r["perturbation"].clone();
                case
            })
            .collect()
    }

    /// The host's version of the recording's quantizer.
    fn host_quantizer(self) -> Quantizer {
        match self {
            Recorded::Native => bnb_cpu_quantize,
            Recorded::Nearest => wgpu_optim::blockwise::quantize,
        }
    }
}

/// A whole tensor's requantization: its codes and one absmax per block.
type Quantizer = fn(&[f32; 256], &[f32]) -> (Vec<u8>, Vec<f32>);

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn bits(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| f32::from_bits(x.as_u64().unwrap() as u32))
        .collect()
}

#[test]
fn dynamic_maps_are_bitsandbytes_maps_bit_for_bit() {
    let f = fixture();
    for (signed, key) in [(true, "signed"), (false, "unsigned")] {
        let want = bits(&f["maps"][key]);
        let got = dynamic_map(signed);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{key} map entry {i}: {a} vs {b}");
        }
    }
}

/// What a replay found: the largest parameter difference and the codes equal to bitsandbytes'.
struct Agreement {
    max_param_diff: f32,
    equal_codes: usize,
    codes: usize,
}

/// bitsandbytes' CPU quantizer (0.50, `quantize_cpu_impl` in csrc/cpu_ops.cpp): not a
/// nearest-code search but a table of 65536 bins over [-1, 1], each holding the code nearest
/// to the bin's value. For a value whose code spacing is finer than a bin (small values
/// relative to the block's absmax), the code is the bin's, not the value's.
fn bnb_cpu_quantize(map: &[f32; 256], values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    /// The tables built so far, by the map's bits.
    type Luts = std::sync::Mutex<Vec<([u32; 256], Vec<u8>)>>;
    static LUTS: OnceLock<Luts> = OnceLock::new();
    let key: [u32; 256] = std::array::from_fn(|i| map[i].to_bits());
    let luts = LUTS.get_or_init(Default::default);
    let mut luts = luts.lock().unwrap();
    if !luts.iter().any(|(k, _)| *k == key) {
        let mid: Vec<f32> = (0..255).map(|i| 0.5 * (map[i] + map[i + 1])).collect();
        let mut code = 0usize;
        let lut = (0..65536u32)
            .map(|i| {
                let val = -1.0f32 + (2.0f32 * i as f32) / 65535.0;
                while code < 255 && mid[code] < val {
                    code += 1;
                }
                code as u8
            })
            .collect();
        luts.push((key, lut));
    }
    let lut = &luts.iter().find(|(k, _)| *k == key).unwrap().1;
    let mut codes = vec![0u8; values.len()];
    let mut absmax = Vec::new();
    for (v, c) in values.chunks(256).zip(codes.chunks_mut(256)) {
        let a = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        absmax.push(a);
        if a == 0.0 {
            continue;
        }
        let inv = 1.0 / a;
        for (x, c) in v.iter().zip(c) {
            let val = (x * inv).clamp(-1.0, 1.0);
            *c = lut[((val + 1.0) * 0.5 * 65535.0 + 0.5) as u16 as usize];
        }
    }
    (codes, absmax)
}

/// The CPU reference's f32 step with `quantize` after each step, over one recorded case: with
/// the recording's quantizer, what bitsandbytes computes, on the host.
fn cpu_replay<C: OptimizerConfig>(
    case: &Value,
    cfg: &C,
    step: wgpu_optim::reference::Step<C>,
    quantize: Quantizer,
) -> Agreement {
    let mut a = Agreement {
        max_param_diff: 0.0,
        equal_codes: 0,
        codes: 0,
    };
    let last = case["steps"].as_array().unwrap().last().unwrap();
    for t in case["tensors"].as_array().unwrap() {
        let n = t[0].as_str().unwrap();
        let mut p = ndarray::Array1::from(floats(&case["init"][n]));
        let mut state = wgpu_optim::reference::State::new(cfg, p.len());
        let quantized = p.len() >= 4096;
        let mut codes = Vec::new();
        for s in case["steps"].as_array().unwrap() {
            let g = ndarray::Array1::from(floats(&s["grads"][n]));
            step(cfg, &mut p, &g, &mut state);
            if quantized {
                codes.clear();
                for key in state.keys() {
                    let map: [f32; 256] = bits(&case["final_state"][n][key]["qmap"])
                        .try_into()
                        .unwrap();
                    let b = state.get_mut(key).unwrap();
                    let (c, absmax) = quantize(&map, b.as_slice().unwrap());
                    let back = wgpu_optim::blockwise::dequantize(&map, &c, &absmax).unwrap();
                    b.assign(&ndarray::Array1::from(back));
                    codes.push((key, c));
                }
            }
        }
        let want = floats(&last["params"][n]);
        for (x, y) in p.iter().zip(&want) {
            a.max_param_diff = a.max_param_diff.max((x - y).abs());
        }
        for (key, c) in &codes {
            let want = case["final_state"][n][key]["codes"].as_array().unwrap();
            a.codes += c.len();
            a.equal_codes += c
                .iter()
                .zip(want)
                .filter(|(x, y)| **x as u64 == y.as_u64().unwrap())
                .count();
        }
    }
    a
}

/// Replay one case on the GPU with `cfg`, the state maps bitsandbytes used, and compare.
fn replay<C: OptimizerConfig>(case: &Value, cfg: C) -> Agreement {
    let gpu = common::gpu();
    let init = case["init"].as_object().unwrap();
    let names: Vec<String> = case["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[0].as_str().unwrap().to_string())
        .collect();
    let values: Vec<Vec<f32>> = names.iter().map(|n| floats(&init[n])).collect();
    let mut params = Params::new(
        &gpu,
        &common::named(names.iter().map(|n| n.as_str()), &values),
    )
    .unwrap();
    let mut opt = FusedOptimizer::new(&params, cfg).unwrap();
    opt.set_state_format(StateFormat::blockwise8()).unwrap();
    // The maps bitsandbytes used for each state (it quantizes RMSprop's and Adagrad's
    // non-negative state with the signed map).
    let final_state = &case["final_state"];
    for key in opt.state_keys() {
        let entry = &final_state["w"][key];
        let map = bits(&entry["qmap"]);
        let which = if map == QuantMap::Signed.values() {
            QuantMap::Signed
        } else {
            assert_eq!(
                map,
                QuantMap::Unsigned.values(),
                "{key}: a map of bitsandbytes'"
            );
            QuantMap::Unsigned
        };
        opt.set_quant_map(key, which).unwrap();
    }
    for step in case["steps"].as_array().unwrap() {
        for (n, g) in step["grads"].as_object().unwrap() {
            params.write_grad(n, &floats(g)).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    let last = case["steps"].as_array().unwrap().last().unwrap();
    let mut a = Agreement {
        max_param_diff: 0.0,
        equal_codes: 0,
        codes: 0,
    };
    for n in &names {
        let want = floats(&last["params"][n]);
        let got = params.read(n).unwrap();
        for (x, y) in got.iter().zip(&want) {
            a.max_param_diff = a.max_param_diff.max((x - y).abs());
        }
        for key in opt.state_keys() {
            let entry = &final_state[n][key];
            match opt.quantized_state(key, n).unwrap() {
                Some(q) => {
                    let want: Vec<u64> = entry["codes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_u64().unwrap())
                        .collect();
                    a.codes += want.len();
                    a.equal_codes += q
                        .codes
                        .iter()
                        .zip(&want)
                        .filter(|(x, y)| **x as u64 == **y)
                        .count();
                }
                None => {
                    let want = floats(&entry["values"]);
                    let got = opt.state(key, n).unwrap();
                    // bitsandbytes' 32-bit kernel rounds differently (`b1 * m + (1 - b1) * g`
                    // where torch lerps): within 1e-5 of the tensor's largest value.
                    let scale = want.iter().fold(0.0f32, |m, y| m.max(y.abs()));
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst <= 1e-5 * scale,
                        "{n} {key}: f32 state off by {worst} (largest value {scale})"
                    );
                }
            }
        }
    }
    a
}

/// The GPU replay and the host replay with `quantize`.
fn both<C: OptimizerConfig>(
    case: &Value,
    cfg: C,
    step: wgpu_optim::reference::Step<C>,
    quantize: Quantizer,
) -> (Agreement, Agreement) {
    let cpu = cpu_replay(case, &cfg, step, quantize);
    (replay(case, cfg), cpu)
}

/// Every case of one recording, replayed on the GPU (nearest-code quantization) and on the
/// host with the recording's quantizer.
fn replay_all(recorded: Recorded) -> Vec<(String, Agreement, Agreement, f32)> {
    use wgpu_optim::reference as r;
    let q = recorded.host_quantizer();
    let mut out = Vec::new();
    for case in &recorded.cases() {
        let c = &case["config"];
        let num = |k: &str| c[k].as_f64().unwrap() as f32;
        let pair = |k: &str| {
            (
                c[k][0].as_f64().unwrap() as f32,
                c[k][1].as_f64().unwrap() as f32,
            )
        };
        let (gpu, cpu) = match case["optimizer"].as_str().unwrap() {
            o @ ("AdamW" | "Adam") => {
                let base = if o == "AdamW" {
                    AdamConfig::adamw()
                } else {
                    AdamConfig::default()
                };
                let cfg = AdamConfig {
                    lr: num("lr"),
                    betas: pair("betas"),
                    eps: num("eps"),
                    weight_decay: num("weight_decay"),
                    ..base
                };
                both(case, cfg, r::adam, q)
            }
            "SGD" => {
                let cfg = SgdConfig {
                    lr: num("lr"),
                    momentum: num("momentum"),
                    weight_decay: num("weight_decay"),
                    ..Default::default()
                };
                both(case, cfg, r::sgd, q)
            }
            "RMSprop" => {
                let cfg = RmsPropConfig {
                    lr: num("lr"),
                    alpha: num("alpha"),
                    eps: num("eps"),
                    ..Default::default()
                };
                both(case, cfg, r::rmsprop, q)
            }
            "Adagrad" => {
                let cfg = AdagradConfig {
                    lr: num("lr"),
                    eps: num("eps"),
                    ..Default::default()
                };
                both(case, cfg, r::adagrad, q)
            }
            "Lion" => {
                let cfg = LionConfig {
                    lr: num("lr"),
                    betas: pair("betas"),
                    weight_decay: num("weight_decay"),
                    ..Default::default()
                };
                both(case, cfg, r::lion, q)
            }
            other => panic!("unknown optimizer {other}"),
        };
        let own = case["perturbation"]["max_abs_param_diff"].as_f64().unwrap() as f32;
        let name = case["name"].as_str().unwrap().to_string();
        for (what, a) in [
            ("GPU, nearest code", &gpu),
            ("host, the recording's quantizer", &cpu),
        ] {
            eprintln!(
                "{name}, {recorded:?} recording ({what}): params within {:.3e} of bitsandbytes (its own spread under a \
                 1e-6 perturbation: {own:.3e}); {:.3}% of {} codes equal",
                a.max_param_diff,
                100.0 * a.equal_codes as f64 / a.codes as f64,
                a.codes
            );
        }
        out.push((name, gpu, cpu, own));
    }
    out
}

#[test]
fn bitsandbytes_trajectories_replay() {
    for (name, gpu, cpu, own) in replay_all(Recorded::Native) {
        let share = |a: &Agreement| a.equal_codes as f64 / a.codes as f64;
        // With bitsandbytes' quantizer the host reproduces bitsandbytes: the update is the
        // same, and what remains is within its own sensitivity.
        assert!(
            cpu.max_param_diff <= 10.0 * own + 1e-6,
            "{name}: host replay {} from bitsandbytes, its own spread is {own}",
            cpu.max_param_diff
        );
        assert!(
            share(&cpu) >= 0.999,
            "{name}: host replay codes {}",
            share(&cpu)
        );
        // The GPU quantizes to the nearest code, which bitsandbytes' CPU table does not for
        // values far below the block's absmax: most codes agree, and the parameters stay
        // close.
        assert!(
            share(&gpu) >= 0.98,
            "{name}: {:.4}% codes equal",
            100.0 * share(&gpu)
        );
        assert!(
            gpu.max_param_diff <= 1e-2,
            "{name}: params {}",
            gpu.max_param_diff
        );
    }
}

/// Against bitsandbytes' nearest-code kernel, the quantizer this crate implements: the same
/// update and the same rounding, so the codes agree as closely as bitsandbytes agrees with
/// itself under a 1e-6 perturbation of its gradients.
#[test]
fn bitsandbytes_nearest_code_trajectories_replay() {
    let (mut equal, mut codes) = (0, 0);
    for (name, gpu, cpu, own) in replay_all(Recorded::Nearest) {
        let share = |a: &Agreement| a.equal_codes as f64 / a.codes as f64;
        for (what, a) in [("GPU", &gpu), ("host", &cpu)] {
            assert!(
                a.max_param_diff <= 10.0 * own + 1e-6,
                "{name} ({what}): params {} from bitsandbytes, its own spread is {own}",
                a.max_param_diff
            );
            assert!(share(a) >= 0.999, "{name} ({what}): codes {}", share(a));
        }
        equal += gpu.equal_codes;
        codes += gpu.codes;
    }
    // Over all cases: the goal is 99% of codes equal to bitsandbytes'.
    let share = equal as f64 / codes as f64;
    eprintln!("all cases: {:.3}% of {codes} codes equal", 100.0 * share);
    assert!(share >= 0.99, "{share}");
}

/// 5 steps in bitsandbytes, its state_dict converted by `tools/bnb_convert.py` into a
/// checkpoint, then 5 steps here: close to 10 steps in bitsandbytes.
#[test]
fn a_converted_bitsandbytes_state_resumes_here() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bnb_resume");
    let case: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/adamw8bit_resume.json")).unwrap(),
    )
    .unwrap();
    let gpu = common::gpu();
    let ck = wgpu_optim::checkpoint::open(format!("{dir}/adamw8bit_step5.safetensors")).unwrap();
    assert_eq!(ck.step_count(), 5);
    let mut params = ck.params(&gpu).unwrap();
    let mut opt = wgpu_optim::Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_state_format(StateFormat::blockwise8()).unwrap();
    ck.restore(&mut params, &mut opt).unwrap();
    assert_eq!(opt.step_count(), 5);
    assert_eq!(opt.config().weight_decay, 0.01);
    for step in case["steps"].as_array().unwrap() {
        for (n, g) in step["grads"].as_object().unwrap() {
            params.write_grad(n, &floats(g)).unwrap();
        }
        opt.step(&mut params).unwrap();
    }
    let last = case["steps"].as_array().unwrap().last().unwrap();
    let (mut worst, mut equal, mut total) = (0.0f32, 0usize, 0usize);
    for (n, want) in last["params"].as_object().unwrap() {
        for (x, y) in params.read(n).unwrap().iter().zip(floats(want)) {
            worst = worst.max((x - y).abs());
        }
        for key in ["exp_avg", "exp_avg_sq"] {
            if let Some(q) = opt.quantized_state(key, n).unwrap() {
                let want = case["final_state"][n][key]["codes"].as_array().unwrap();
                total += want.len();
                equal += q
                    .codes
                    .iter()
                    .zip(want)
                    .filter(|(a, b)| **a as u64 == b.as_u64().unwrap())
                    .count();
            }
        }
    }
    let share = equal as f64 / total as f64;
    eprintln!(
        "resumed: params within {worst:.3e} of bitsandbytes' 10 steps, {:.3}% codes equal",
        100.0 * share
    );
    assert!(worst <= 1e-3, "params {worst} from bitsandbytes");
    assert!(share >= 0.98, "{share}");
}
