//! What a user hits beyond the happy path: threads, a host that runs ahead of the GPU, many tiny
//! tensors in the norm passes, clearing gradients, and readable errors.

mod common;

use common::{gpu, randn, rng};
use wgpu_optim::{
    reference, Adagrad, Adam, AdamConfig, Error, Gpu, GradScaler, NormType, Optimizer, Params,
    RmsProp, Sgd, SgdConfig,
};

fn assert_send_sync<T: Send + Sync>() {}

/// A buffer of the user's own, usable by `Params::from_buffers`.
fn user_buffer(gpu: &Gpu, size: u64) -> wgpu::Buffer {
    gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("user buffer"),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

#[test]
fn handles_are_send_and_sync() {
    assert_send_sync::<Gpu>();
    assert_send_sync::<Params>();
    assert_send_sync::<Adam>();
    assert_send_sync::<Sgd>();
    assert_send_sync::<RmsProp>();
    assert_send_sync::<Adagrad>();
    assert_send_sync::<GradScaler>();
    assert_send_sync::<wgpu_optim::Scheduler>();
}

/// `steps` AdamW steps with clipping on fresh params; returns params and state as bits.
fn run_adam(gpu: &Gpu, init: &[f32], grads: &[Vec<f32>]) -> (Vec<u32>, Vec<u32>) {
    let mut params = Params::new(gpu, &[("w", init)]).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_max_grad_norm(Some(1.0)).unwrap();
    for g in grads {
        params.write_grad("w", g).unwrap();
        opt.step(&mut params).unwrap();
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    (
        bits(params.read("w").unwrap()),
        bits(opt.state("exp_avg_sq", "w").unwrap()),
    )
}

#[test]
fn two_threads_step_two_optimizers_on_one_device() {
    let gpu = gpu();
    let mut rng = rng("two_threads_step_two_optimizers_on_one_device");
    let n = 10_007;
    let inits: Vec<Vec<f32>> = (0..2).map(|_| randn(&mut rng, n, 1.0)).collect();
    let grads: Vec<Vec<Vec<f32>>> = (0..2)
        .map(|_| (0..12).map(|_| randn(&mut rng, n, 0.5)).collect())
        .collect();
    let alone: Vec<_> = (0..2)
        .map(|k| run_adam(&gpu, &inits[k], &grads[k]))
        .collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|k| {
                let (gpu, init, grads) = (gpu.clone(), &inits[k], &grads[k]);
                s.spawn(move || run_adam(&gpu, init, grads))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together, "two threads changed the results");
}

#[test]
fn step_does_not_wait_for_the_gpu() {
    // Every place where this crate blocks on the GPU counts itself (`Gpu::blocking_waits`).
    // Steps with clipping, skipping and a loss scaler on (the path whose scalars depend on
    // what the GPU skipped, and which used to read the skip count back) make no such wait,
    // skipped steps included; asking for the step count does. (How long `step()` takes says
    // nothing here: lavapipe runs the work inside `queue.submit`.) A handle of its own (same
    // device) so that other tests' read-backs do not count.
    let gpu = gpu().with_dispatch_dim_cap(u32::MAX);
    let n = 4099;
    let mut params = Params::zeros(&gpu, &[("w", n)]).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::adamw()).unwrap();
    opt.set_max_grad_norm(Some(1.0)).unwrap();
    opt.set_skip_nonfinite(true).unwrap();
    let scaler = GradScaler::new(&gpu, Default::default()).unwrap();
    opt.set_grad_scaler(Some(&scaler)).unwrap();
    let good = vec![0.25; n];
    let mut bad = good.clone();
    bad[n - 1] = f32::NAN;
    let before = gpu.blocking_waits();
    for step in 0..200 {
        params
            .write_grad("w", if step % 7 == 3 { &bad } else { &good })
            .unwrap();
        opt.step(&mut params).unwrap();
    }
    assert_eq!(gpu.blocking_waits(), before, "step() waited on the GPU");
    let skipped = (0..200).filter(|s| s % 7 == 3).count() as u64;
    assert_eq!(opt.step_count(), 200 - skipped);
}

/// Tensor sizes for the many-tensor norm tests: mostly tiny, two above the small-tensor cut.
fn many_sizes(rng: &mut rand::rngs::StdRng) -> Vec<usize> {
    use rand::Rng;
    let mut sizes: Vec<usize> = (0..3000).map(|_| rng.random_range(1..=300)).collect();
    sizes.extend([1023, 1024, 1025, 40_000, 50_001]);
    sizes.swap(10, 3001); // a big one among the small ones
    sizes
}

fn norm_bits(params: &Params, p: f32) -> u32 {
    params.grad_norm(p).unwrap().value().unwrap().to_bits()
}

#[test]
fn many_tiny_tensors_norm_is_exact_and_independent_of_packing() {
    let gpu = gpu();
    let mut rng = rng("many_tiny_tensors_norm_is_exact_and_independent_of_packing");
    let sizes = many_sizes(&mut rng);
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("t{i}")).collect();
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut rng, n, 1.0)).collect();
    let specs: Vec<(&str, usize)> = names
        .iter()
        .map(|s| s.as_str())
        .zip(sizes.clone())
        .collect();
    // One arena; small chunks (no tensor split: each fits a chunk); the user's own buffers.
    let one = Params::zeros(&gpu, &specs).unwrap();
    let chunked = Params::zeros_with_max_chunk_bytes(&gpu, &specs, 256 << 10).unwrap();
    assert!(chunked.chunk_count() > 1);
    let bufs: Vec<(wgpu::Buffer, wgpu::Buffer)> = sizes
        .iter()
        .map(|&n| {
            let make = || user_buffer(&gpu, (n.div_ceil(4) * 16) as u64);
            (make(), make())
        })
        .collect();
    let own: Vec<(&str, &wgpu::Buffer, &wgpu::Buffer, usize)> = names
        .iter()
        .zip(&bufs)
        .zip(&sizes)
        .map(|((name, (p, g)), &n)| (name.as_str(), p, g, n))
        .collect();
    let borrowed = Params::from_buffers(&gpu, &own).unwrap();
    for params in [&one, &chunked, &borrowed] {
        for (name, g) in names.iter().zip(&grads) {
            params.write_grad(name, g).unwrap();
        }
    }
    let arrays: Vec<ndarray::Array1<f32>> = grads
        .iter()
        .map(|g| ndarray::Array1::from(g.clone()))
        .collect();
    let refs: Vec<&ndarray::Array1<f32>> = arrays.iter().collect();
    for norm in [NormType::L2, NormType::L1, NormType::Inf] {
        let bits = norm_bits(&one, norm.p());
        assert_eq!(bits, norm_bits(&chunked, norm.p()), "{norm:?}: chunked");
        assert_eq!(
            bits,
            norm_bits(&borrowed, norm.p()),
            "{norm:?}: own buffers"
        );
        assert_eq!(bits, norm_bits(&one, norm.p()), "{norm:?}: run to run");
        let want = reference::grad_norm(&refs, norm, 1.0).unwrap();
        let got = f32::from_bits(bits) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want,
            "{norm:?}: GPU {got}, f64 reference {want}"
        );
    }
    // A NaN or inf in one tiny tensor, in a boundary-sized one, or in a big one is seen.
    for (t, at) in [(5, 0), (3001, 1022), (3002, 1023), (10, 49_999)] {
        for (bad, nan) in [(f32::NAN, true), (f32::INFINITY, false)] {
            let mut g = grads[t].clone();
            let at = at.min(g.len() - 1);
            g[at] = bad;
            one.write_grad(&names[t], &g).unwrap();
            let v = one.grad_norm(2.0).unwrap().value().unwrap();
            assert!(
                if nan { v.is_nan() } else { v == f32::INFINITY },
                "{bad} in t{t}[{at}] gave norm {v}"
            );
            one.write_grad(&names[t], &grads[t]).unwrap();
        }
    }
}

#[test]
fn many_tiny_tensors_clip_and_skip_like_one_tensor() {
    // Clipped SGD over 2000 tiny tensors equals clipped SGD over their concatenation.
    let gpu = gpu();
    let mut rng = rng("many_tiny_tensors_clip_and_skip_like_one_tensor");
    let sizes: Vec<usize> = (0..2000).map(|i| 1 + (i * 37) % 200).collect();
    let total: usize = sizes.iter().sum();
    let init = randn(&mut rng, total, 1.0);
    let grad = randn(&mut rng, total, 1.0);
    let names: Vec<String> = (0..sizes.len()).map(|i| format!("t{i}")).collect();
    let mut many_init = Vec::new();
    let mut at = 0;
    for &n in &sizes {
        many_init.push(init[at..at + n].to_vec());
        at += n;
    }
    let tensors: Vec<(&str, &[f32])> = names
        .iter()
        .map(|s| s.as_str())
        .zip(many_init.iter().map(|v| &v[..]))
        .collect();
    let mut many = Params::new(&gpu, &tensors).unwrap();
    let mut one = Params::new(&gpu, &[("all", &init[..])]).unwrap();
    let cfg = SgdConfig {
        lr: 0.1,
        ..Default::default()
    };
    let mut opt_many = Sgd::new(&many, cfg.clone()).unwrap();
    let mut opt_one = Sgd::new(&one, cfg).unwrap();
    for o in [&mut opt_many as &mut dyn Optimizer, &mut opt_one] {
        o.set_max_grad_norm(Some(0.5)).unwrap();
    }
    at = 0;
    for (name, &n) in names.iter().zip(&sizes) {
        many.write_grad(name, &grad[at..at + n]).unwrap();
        at += n;
    }
    one.write_grad("all", &grad).unwrap();
    opt_many.step(&mut many).unwrap();
    opt_one.step(&mut one).unwrap();
    let n_many = opt_many.last_grad_norm().unwrap();
    let n_one = opt_one.last_grad_norm().unwrap();
    assert!(
        (n_many - n_one).abs() <= 1e-5 * n_one,
        "{n_many} vs {n_one}"
    );
    let after_one = one.read("all").unwrap();
    at = 0;
    for (name, &n) in names.iter().zip(&sizes) {
        let got = many.read(name).unwrap();
        for (k, (a, b)) in got.iter().zip(&after_one[at..at + n]).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 + 1e-5 * b.abs(),
                "{name}[{k}]: {a} vs {b}"
            );
        }
        at += n;
    }
    // An inf in one tiny tensor skips the step for all of them.
    let before = many.read("t1234").unwrap();
    many.write_grad("t1234", &vec![f32::INFINITY; sizes[1234]])
        .unwrap();
    opt_many.step(&mut many).unwrap();
    assert!(opt_many.last_step_skipped().unwrap());
    assert_eq!(many.read("t1234").unwrap(), before);
    assert_eq!(opt_many.step_count(), 1);
}

#[test]
fn zero_grad_clears_every_chunk_and_only_the_tensors_range_of_own_buffers() {
    let gpu = gpu();
    let specs = [("a", 3000), ("b", 5), ("c", 70_000)];
    let mut params = Params::zeros_with_max_chunk_bytes(&gpu, &specs, 64 << 10).unwrap();
    assert!(params.chunk_count() > 2);
    for (name, n) in specs {
        params.write_grad(name, &vec![1.5; n]).unwrap();
    }
    params.zero_grad().unwrap();
    for (name, n) in specs {
        assert_eq!(params.read_grad(name).unwrap(), vec![0.0; n], "{name}");
    }
    // A user's buffer: 7 elements bound, 16 in the buffer; the 8 past the vec4-rounded range
    // are the user's and stay.
    let make = || user_buffer(&gpu, 64);
    let (p, g) = (make(), make());
    gpu.queue()
        .write_buffer(&g, 0, bytemuck::cast_slice(&[2.0f32; 16]));
    let mut own = Params::from_buffers(&gpu, &[("w", &p, &g, 7)]).unwrap();
    own.zero_grad().unwrap();
    let all = gpu.read_buffer_f32(&g, 16).unwrap();
    assert_eq!(&all[..8], &[0.0; 8]);
    assert_eq!(&all[8..], &[2.0; 8]);
}

#[test]
fn reading_more_f32_than_a_buffer_holds_is_an_error() {
    let gpu = gpu();
    let b = user_buffer(&gpu, 64);
    gpu.queue()
        .write_buffer(&b, 0, bytemuck::cast_slice(&[3.0f32; 16]));
    // 17 f32 do not fit 64 bytes; 2^62 + 1 f32 are more bytes than a u64 (or usize) counts.
    for len in [17, 1 << 62, (1 << 62) + 1, usize::MAX] {
        match gpu.read_buffer_f32(&b, len) {
            Err(Error::BufferSize(msg)) => assert!(msg.contains(&len.to_string()), "{msg}"),
            other => panic!("{len} f32: {other:?}"),
        }
    }
    assert_eq!(gpu.read_buffer_f32(&b, 16).unwrap(), vec![3.0; 16]);
}

#[test]
fn errors_read_as_messages() {
    let gpu = gpu();
    let mut params = Params::zeros(&gpu, &[("w", 1)]).unwrap();
    let e = params.write_grad("w", &[1.0, 2.0]).unwrap_err();
    assert_eq!(e.to_string(), "tensor `w` has 1 element, got 2");
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    let e = opt.set_lr(-1e-3).unwrap_err();
    assert_eq!(e.to_string(), "invalid lr = -0.001: must be >= 0");
    // Debug is the message too, so `fn main() -> Result<(), Error>` prints it.
    assert_eq!(format!("{e:?}"), e.to_string());
    let hint = Error::NoAdapter("none".into());
    assert!(format!("{hint:?}").contains("apt-get install -y mesa-vulkan-drivers"));
    assert_eq!(opt.lr(), 1e-3);
    opt.step(&mut params).unwrap();
}

#[test]
fn a_lost_device_is_an_error_from_every_later_call() {
    // A device of its own (Gpu::new makes one per call), destroyed mid-run.
    if gpu().info().backend == wgpu::Backend::Gl {
        // wgpu's GL devices share their adapter's one EGL context (see Gpu::new), and
        // destroying one leaves that context unusable for the others in this process. This
        // test runs in the Vulkan pass of the suite.
        eprintln!("not on GL: destroying a device there breaks the other devices' context");
        return;
    }
    let gpu = Gpu::new().expect("an adapter");
    let mut params = Params::zeros(&gpu, &[("w", 100)]).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    opt.set_max_grad_norm(Some(1.0)).unwrap();
    opt.step(&mut params).unwrap();
    gpu.device().destroy();
    let lost = |r: Result<(), Error>, what: &str| match r {
        Err(Error::DeviceLost(_)) => {}
        other => panic!("{what} after the device was lost: {other:?}"),
    };
    lost(opt.step(&mut params), "step");
    lost(params.read("w").map(drop), "read");
    lost(params.write_grad("w", &[0.0; 100]), "write_grad");
    lost(params.zero_grad(), "zero_grad");
    lost(opt.state("exp_avg", "w").map(drop), "state");
    lost(opt.last_grad_norm().map(drop), "last_grad_norm");
    lost(params.grad_norm(2.0).map(drop), "grad_norm");
    lost(Params::zeros(&gpu, &[("x", 8)]).map(drop), "Params::zeros");
    lost(
        Adam::new(&params, AdamConfig::default()).map(drop),
        "Adam::new",
    );
    lost(opt.set_skip_nonfinite(true), "set_skip_nonfinite");
}

#[test]
fn wgpu_errors_inside_our_calls_are_errors_not_panics() {
    let gpu = gpu();
    let make = || user_buffer(&gpu, 64);
    let (p, g) = (make(), make());
    let mut params = Params::from_buffers(&gpu, &[("w", &p, &g, 16)]).unwrap();
    let mut opt = Sgd::new(&params, SgdConfig::default()).unwrap();
    opt.step(&mut params).unwrap();
    g.destroy(); // the user's buffer goes away under the optimizer
    match opt.step(&mut params) {
        Err(Error::Gpu(msg)) => assert!(msg.contains("destroyed"), "{msg}"),
        other => panic!("step on a destroyed buffer: {other:?}"),
    }
    assert!(matches!(params.read_grad("w"), Err(Error::Gpu(_))));
    // The device itself is fine: other work goes on.
    let mut ok = Params::zeros(&gpu, &[("v", 4)]).unwrap();
    let mut o2 = Sgd::new(&ok, SgdConfig::default()).unwrap();
    o2.step(&mut ok).unwrap();
}

#[test]
fn an_arena_no_device_can_hold_is_refused_before_allocating() {
    let gpu = gpu();
    for n in [usize::MAX / 2, 1 << 60] {
        match Params::zeros(&gpu, &[("huge", n), ("b", 3)]) {
            Err(Error::DeviceLimit(msg)) => assert!(msg.contains("no device holds"), "{msg}"),
            other => panic!("{n} elements: {other:?}"),
        }
    }
}

#[test]
fn one_gpu_per_thread() {
    // Each thread opens its own device (on wgpu's GL backend all of them come from one adapter,
    // see Gpu::new) and steps its own optimizer.
    let results: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|k| {
                s.spawn(move || {
                    let gpu = Gpu::new().expect("an adapter");
                    let init = vec![0.5 + k as f32; 1000];
                    let grads = vec![vec![0.1; 1000]; 5];
                    run_adam(&gpu, &init, &grads).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let gpu = gpu();
    for (k, got) in results.iter().enumerate() {
        let init = vec![0.5 + k as f32; 1000];
        let want = run_adam(&gpu, &init, &vec![vec![0.1; 1000]; 5]).0;
        assert_eq!(got, &want, "thread {k}");
    }
}

/// A device of the default adapter with at most `storage` storage buffers per shader stage and
/// bindings of at most `binding_bytes`.
fn limited_gpu(storage: u32, binding_bytes: u64) -> Gpu {
    use wgpu_optim::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    let mut limits = adapter.limits();
    limits.max_storage_buffers_per_shader_stage = storage;
    limits.max_storage_buffer_binding_size = binding_bytes;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device");
    Gpu::from_device(device, queue)
}

/// A precision or state format the device cannot bind is refused before anything changes, so
/// the optimizer goes on stepping as it was.
#[test]
fn settings_the_device_cannot_bind_are_refused_and_change_nothing() {
    use wgpu_optim::{DType, Lamb, LambConfig, Precision, StateFormat};
    // LAMB binds 5 + 2 states + 2 for its per-tensor sums = 9; master weights need a 10th.
    let gpu = limited_gpu(9, 1 << 27);
    let mut params = Params::builder(&gpu)
        .tensor_with_data("w", &[64], DType::Bf16, &[0.5; 64])
        .build()
        .unwrap();
    params.write_grad("w", &[0.1; 64]).unwrap();
    let mut opt = Lamb::new(&params, LambConfig::default()).unwrap();
    let master = Precision {
        master_weights: true,
        ..Default::default()
    };
    match opt.set_precision(master) {
        Err(Error::DeviceLimit(m)) => assert!(m.contains("needs 10"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(opt.precision(), Precision::default());
    opt.step(&mut params).unwrap();
    assert_eq!(opt.step_count(), 1);

    // 8-bit state: 4096 tensors below min_size keep f32 state in whole blocks of 256, 4 MiB
    // per state in one chunk of 1 MiB parameters; the device binds 1 MiB.
    let gpu = limited_gpu(16, 1 << 20);
    let names: Vec<String> = (0..4096).map(|i| format!("t{i}")).collect();
    let tensors: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 64)).collect();
    let mut params = Params::zeros(&gpu, &tensors).unwrap();
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    match opt.set_state_format(StateFormat::Blockwise8 { min_size: 4096 }) {
        Err(Error::DeviceLimit(m)) => assert!(m.contains("min_size"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(opt.state_format(), StateFormat::Dense);
    opt.step(&mut params).unwrap();
    assert_eq!(opt.step_count(), 1);
}
