//! `wgpu_optim::burn`: Burn models stepped by the fused kernels, on Burn's own wgpu device.
//!
//! Every step is checked against the CPU reference (bit for bit on lavapipe, where the
//! reference knows how the driver rounds `fma`; within `Bound::REFERENCE` elsewhere), and the
//! AdamW run against Burn's own AdamW from the same start.

mod common;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdaGradConfig, AdafactorConfig as BurnAdafactorConfig, AdamWConfig, GradientsParams,
    LambConfig as BurnLambConfig, LionConfig as BurnLionConfig, RmsPropConfig as BurnRmsPropConfig,
    SgdConfig as BurnSgdConfig,
};
use burn::tensor::{activation::relu, Device, Tensor, TensorData};
use common::Bound::Bits;
use common::{compare, randn, Bound};
use ndarray::Array1;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::OnceLock;
use wgpu_optim::burn::{init, BurnOptimizer, BurnRecord};
use wgpu_optim::reference::{self, State};
use wgpu_optim::{
    AdadeltaConfig, AdafactorConfig, AdagradConfig, AdamConfig, AdamaxConfig, AsgdConfig, DType,
    Error, FusedOptimizer, Gpu, LambConfig, LionConfig, NAdamConfig, NormType, Optimizer,
    OptimizerConfig, ParamGroup, Params, Precision, RAdamConfig, RmsPropConfig, RpropConfig,
    ScheduleFreeAdamWConfig, SgdConfig, StateFormat,
};

/// Burn's device (with autodiff) and our handle on it. No adapter is a loud failure.
fn setup() -> (Device, Gpu) {
    static SETUP: OnceLock<(Device, Gpu)> = OnceLock::new();
    let (device, gpu) = SETUP
        .get_or_init(|| {
            let (device, gpu) = init(Default::default()).unwrap_or_else(|e| {
                panic!(
                    "these tests need a real GPU adapter: {e}\n\
                     On Linux without a GPU: `apt-get install -y mesa-vulkan-drivers` (lavapipe)."
                )
            });
            let i = gpu.info();
            eprintln!("adapter: {} ({:?}, driver {})", i.name, i.backend, i.driver);
            (device.autodiff(), gpu)
        })
        .clone();
    // The reference rounds `fma` as this driver does (per thread).
    reference::set_fused_multiply_add(gpu.fused_multiply_add());
    (device, gpu)
}

/// Bit for bit on lavapipe, else the crate's bound against the reference.
fn bound(gpu: &Gpu) -> Bound {
    if common::is_lavapipe(gpu) {
        Bound::Bits
    } else {
        Bound::REFERENCE
    }
}

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

/// `[d_in, d_hidden, d_out]`: sizes that are not multiples of 4 or 64.
const DIMS: [usize; 3] = [7, 13, 3];

/// Start values of an [`Mlp`]: w1, b1, w2, b2.
fn init_values(rng: &mut StdRng) -> Vec<Vec<f32>> {
    let [i, h, o] = DIMS;
    vec![
        randn(rng, i * h, 0.4),
        randn(rng, h, 0.1),
        randn(rng, h * o, 0.3),
        randn(rng, o, 0.1),
    ]
}

fn shapes() -> Vec<Vec<usize>> {
    let [i, h, o] = DIMS;
    vec![vec![i, h], vec![h], vec![h, o], vec![o]]
}

fn linear(w: &[f32], b: &[f32], i: usize, o: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::<2>::from_data(
            TensorData::new(w.to_vec(), [i, o]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::<1>::from_data(
            TensorData::new(b.to_vec(), [o]),
            device,
        ))),
    }
}

fn mlp(v: &[Vec<f32>], device: &Device) -> Mlp {
    let [i, h, o] = DIMS;
    Mlp {
        fc1: linear(&v[0], &v[1], i, h, device),
        fc2: linear(&v[2], &v[3], h, o, device),
    }
}

fn ids(m: &Mlp) -> [ParamId; 4] {
    [
        m.fc1.weight.id,
        m.fc1.bias.as_ref().unwrap().id,
        m.fc2.weight.id,
        m.fc2.bias.as_ref().unwrap().id,
    ]
}

const PATHS: [&str; 4] = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

/// The module's parameter values (a sync point; the tensors read are clones, dropped here).
fn values(m: &Mlp) -> Vec<Vec<f32>> {
    let read1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    let read2 = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
    vec![
        read2(m.fc1.weight.val()),
        read1(m.fc1.bias.as_ref().unwrap().val()),
        read2(m.fc2.weight.val()),
        read1(m.fc2.bias.as_ref().unwrap().val()),
    ]
}

/// Gradients for the parameters given (`None`: no gradient for that one).
fn grads_of(m: &Mlp, g: &[Option<Vec<f32>>], device: &Device) -> GradientsParams {
    let mut grads = GradientsParams::new();
    let device = device.clone().inner();
    let ids = ids(m);
    for (k, (g, shape)) in g.iter().zip(shapes()).enumerate() {
        let Some(g) = g else { continue };
        if shape.len() == 2 {
            let t = Tensor::<2>::from_data(TensorData::new(g.clone(), shape), &device);
            grads.register(ids[k], t);
        } else {
            let t = Tensor::<1>::from_data(TensorData::new(g.clone(), shape), &device);
            grads.register(ids[k], t);
        }
    }
    grads
}

/// The gradients of a GradientsParams (read before a step consumes it).
fn read_grads(m: &Mlp, grads: &GradientsParams) -> Vec<Vec<f32>> {
    let ids = ids(m);
    vec![
        grads
            .get::<2>(ids[0])
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
        grads
            .get::<1>(ids[1])
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
        grads
            .get::<2>(ids[2])
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
        grads
            .get::<1>(ids[3])
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
    ]
}

/// A regression batch `(x, y)` for step `s` of a run seeded with `seed`.
fn batch(seed: u64, s: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (0x9e37_79b9 * (s as u64 + 1)));
    let [i, _, o] = DIMS;
    let n = 37;
    let x = randn(&mut rng, n * i, 1.0);
    let y = randn(&mut rng, n * o, 1.0);
    (
        Tensor::<2>::from_data(TensorData::new(x, [n, i]), device),
        Tensor::<2>::from_data(TensorData::new(y, [n, o]), device),
    )
}

fn mse(m: &Mlp, x: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    (m.forward(x) - y).powf_scalar(2.0).mean()
}

fn scalar(t: Tensor<1>) -> f32 {
    t.into_data().try_to_vec::<f32>().unwrap()[0]
}

/// One step of the reference over the four tensors, with the gradients multiplied by `mul`.
fn reference_step<C: OptimizerConfig>(
    f: reference::Step<C>,
    cfg: &C,
    p: &mut [Array1<f32>],
    g: &[Vec<f32>],
    states: &mut [State],
    mul: f32,
) {
    for k in 0..p.len() {
        let gk = Array1::from(g[k].iter().map(|x| x * mul).collect::<Vec<f32>>());
        f(cfg, &mut p[k], &gk, &mut states[k]);
    }
}

fn to_arrays(v: Vec<Vec<f32>>) -> Vec<Array1<f32>> {
    v.into_iter().map(Array1::from).collect()
}

#[test]
fn adamw_in_a_burn_loop_matches_the_reference_and_burns_adamw() {
    let (device, gpu) = setup();
    let mut rng = common::rng("adamw_in_a_burn_loop");
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut rng);
    let (lr, steps) = (1e-2, 25);
    let cfg = AdamConfig {
        lr: lr as f32,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 1e-2,
        decoupled_weight_decay: true,
        ..Default::default()
    };

    // Ours, against the reference at every step.
    let mut model = mlp(&start, &device);
    let mut optim = BurnOptimizer::new(cfg.clone());
    let mut p = to_arrays(start.clone());
    let mut states: Vec<State> = p.iter().map(|t| State::new(&cfg, t.len())).collect();
    let mut ours = Vec::new();
    for s in 0..steps {
        let (x, y) = batch(seed, s, &device);
        let loss = mse(&model, x, y);
        ours.push(scalar(loss.clone()));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let g = read_grads(&model, &grads);
        model = optim.step(lr, model, grads).unwrap();
        reference_step(reference::adam, &cfg, &mut p, &g, &mut states, 1.0);
        for (k, got) in values(&model).iter().enumerate() {
            compare(
                &format!("step {s} {}", PATHS[k]),
                got,
                p[k].as_slice().unwrap(),
                bound(&gpu),
            );
        }
    }
    // The state is ours, keyed by ParamId and named by module path.
    let opt = optim.optimizer().unwrap();
    assert_eq!(opt.step_count(), steps as u64);
    for (k, path) in PATHS.iter().enumerate() {
        assert_eq!(optim.path_of(ids(&model)[k]), Some(*path));
        compare(
            &format!("{path} exp_avg"),
            &opt.state("exp_avg", path).unwrap(),
            states[k].get("exp_avg").unwrap().as_slice().unwrap(),
            bound(&gpu),
        );
    }

    // Burn's AdamW from the same start on the same batches.
    let mut model_b = mlp(&start, &device);
    let mut burn_adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(1e-2)
        .init();
    let mut theirs = Vec::new();
    for s in 0..steps {
        let (x, y) = batch(seed, s, &device);
        let loss = mse(&model_b, x, y);
        theirs.push(scalar(loss.clone()));
        let grads = GradientsParams::from_grads(loss.backward(), &model_b);
        model_b = burn_adamw.step(lr, model_b, grads);
    }
    // The same algorithm (decoupled decay first, eps added to the bias-corrected sqrt(v)),
    // rounded differently: Burn computes the bias corrections in f32 and divides m_hat by
    // (sqrt(v_hat) + eps); we compute them in f64 and scale m by lr / bc1 before dividing by
    // sqrt(v) / sqrt(bc2) + eps, as torch.optim does. A few ULP per step, through 25 steps.
    let tol = Bound::Within {
        atol: 2e-5,
        rtol: 1e-4,
    };
    let worst_loss = compare("loss, ours vs Burn's AdamW", &ours, &theirs, tol);
    let (a, b) = (values(&model), values(&model_b));
    let mut worst = 0.0f32;
    for k in 0..4 {
        worst = worst.max(compare(
            &format!("{} ours vs Burn's AdamW", PATHS[k]),
            &a[k],
            &b[k],
            tol,
        ));
    }
    eprintln!(
        "ours vs Burn's AdamW after {steps} steps: worst loss error {worst_loss:.3}, worst \
         param error {worst:.3} of the bound (atol 2e-5, rtol 1e-4)"
    );
    assert!(ours[steps - 1] < ours[0], "the loss went down: {ours:?}");
}

#[test]
fn every_optimizer_steps_a_burn_model_as_its_reference() {
    let (device, gpu) = setup();
    let mut rng = common::rng("every_optimizer");
    fn run<C: OptimizerConfig>(
        name: &str,
        cfg: C,
        f: reference::Step<C>,
        rng: &mut StdRng,
        device: &Device,
        gpu: &Gpu,
    ) {
        let start = init_values(rng);
        let mut model = mlp(&start, device);
        let mut optim = BurnOptimizer::new(cfg.clone());
        let mut p = to_arrays(start);
        // Each tensor in one piece, in its shape (Adafactor factors the weights).
        let mut states: Vec<State> = p
            .iter()
            .zip(shapes())
            .map(|(t, shape)| State::new(&cfg, t.len()).with_layout(&shape, &[t.len()]))
            .collect();
        for s in 0..3 {
            let g: Vec<Vec<f32>> = p.iter().map(|t| randn(rng, t.len(), 1.0)).collect();
            let grads = grads_of(
                &model,
                &g.iter().cloned().map(Some).collect::<Vec<_>>(),
                device,
            );
            model = optim.step(cfg.lr() as f64, model, grads).unwrap();
            reference_step(f, &cfg, &mut p, &g, &mut states, 1.0);
            for (k, got) in values(&model).iter().enumerate() {
                compare(
                    &format!("{name} step {s} {}", PATHS[k]),
                    got,
                    p[k].as_slice().unwrap(),
                    bound(gpu),
                );
            }
        }
        eprintln!("{name}: 3 steps as the reference");
    }
    let (r, d, g) = (&mut rng, &device, &gpu);
    run("AdamW", AdamConfig::adamw(), reference::adam, r, d, g);
    let amsgrad = AdamConfig {
        amsgrad: true,
        weight_decay: 0.1,
        ..Default::default()
    };
    run("Adam amsgrad", amsgrad, reference::adam, r, d, g);
    let sgd = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 1e-3,
        ..Default::default()
    };
    run("SGD", sgd, reference::sgd, r, d, g);
    let rms = RmsPropConfig {
        centered: true,
        momentum: 0.5,
        ..Default::default()
    };
    run("RMSprop", rms, reference::rmsprop, r, d, g);
    run(
        "Adagrad",
        AdagradConfig::default(),
        reference::adagrad,
        r,
        d,
        g,
    );
    run(
        "Adadelta",
        AdadeltaConfig::default(),
        reference::adadelta,
        r,
        d,
        g,
    );
    run(
        "Adamax",
        AdamaxConfig::default(),
        reference::adamax,
        r,
        d,
        g,
    );
    run("NAdam", NAdamConfig::default(), reference::nadam, r, d, g);
    run("RAdam", RAdamConfig::default(), reference::radam, r, d, g);
    run("Rprop", RpropConfig::default(), reference::rprop, r, d, g);
    run("ASGD", AsgdConfig::default(), reference::asgd, r, d, g);
    run("Lion", LionConfig::default(), reference::lion, r, d, g);
    let lamb = LambConfig {
        weight_decay: 1e-2,
        ..Default::default()
    };
    run("LAMB", lamb, reference::lamb, r, d, g);
    let adafactor = AdafactorConfig {
        weight_decay: 1e-2,
        ..Default::default()
    };
    run("Adafactor", adafactor, reference::adafactor, r, d, g);
}

#[test]
fn schedule_free_switches_a_burn_model_between_its_sequences() {
    let (device, gpu) = setup();
    let mut rng = common::rng("schedule_free");
    let start = init_values(&mut rng);
    let cfg = ScheduleFreeAdamWConfig {
        lr: 1e-2,
        weight_decay: 1e-2,
        warmup_steps: 2,
        ..Default::default()
    };
    // The switch weights come from beta1 as written (0.9, not the f32's widened value).
    assert_eq!(cfg.betas.0, 0.9);
    let beta1 = 0.9f64;
    let mut optim = BurnOptimizer::new(cfg.clone());
    let random_grads = |rng: &mut StdRng| -> Vec<Vec<f32>> {
        shapes()
            .iter()
            .map(|s| randn(rng, s.iter().product(), 1.0))
            .collect()
    };
    let all = |g: &[Vec<f32>]| g.iter().cloned().map(Some).collect::<Vec<_>>();
    let in_eval = |e: Error| assert!(matches!(e, Error::InvalidOptions(_)), "{e}");

    // Before the first step x = y: only the mode changes, and a step in eval mode is an error.
    let mut model = optim.eval(mlp(&start, &device)).unwrap();
    assert!(!optim.is_train_mode());
    assert_eq!(values(&model), start);
    let g = random_grads(&mut rng);
    in_eval(
        optim
            .step(1e-2, model.clone(), grads_of(&model, &all(&g), &device))
            .unwrap_err(),
    );
    model = optim.train(model).unwrap();
    assert!(optim.is_train_mode());

    let mut p = to_arrays(start);
    let mut states: Vec<State> = p.iter().map(|t| State::new(&cfg, t.len())).collect();
    let check = |what: &str, model: &Mlp, p: &[Array1<f32>]| {
        for (k, got) in values(model).iter().enumerate() {
            compare(
                &format!("{what} {}", PATHS[k]),
                got,
                p[k].as_slice().unwrap(),
                bound(&gpu),
            );
        }
    };
    let z_of = |optim: &BurnOptimizer<ScheduleFreeAdamWConfig>| -> Vec<Array1<f32>> {
        let opt = optim.optimizer().unwrap();
        PATHS
            .iter()
            .map(|path| Array1::from(opt.state("z", path).unwrap()))
            .collect()
    };
    let switch = |p: &mut [Array1<f32>], z: &[Array1<f32>], w: f64| {
        for (p, z) in p.iter_mut().zip(z) {
            reference::schedule_free_switch(p, z, w as f32);
        }
    };
    let step = |optim: &mut BurnOptimizer<ScheduleFreeAdamWConfig>,
                model: Mlp,
                p: &mut [Array1<f32>],
                states: &mut [State],
                rng: &mut StdRng| {
        let g = random_grads(rng);
        let grads = grads_of(&model, &all(&g), &device);
        let model = optim.step(1e-2, model, grads).unwrap();
        reference_step(reference::schedule_free_adamw, &cfg, p, &g, states, 1.0);
        model
    };
    for _ in 0..3 {
        model = step(&mut optim, model, &mut p, &mut states, &mut rng);
    }
    check("y after 3 steps", &model, &p);

    // A model the optimizer does not step is refused, and the mode stays; `try_eval` and
    // `try_train` give that model back as it was.
    let e = optim.eval(mlp(&values(&model), &device)).unwrap_err();
    assert!(matches!(e, Error::ParamSetChanged(_)), "{e}");
    assert!(optim.is_train_mode());
    let other = mlp(&values(&model), &device);
    let other_ids = ids(&other);
    let r = optim.try_eval(other).unwrap_err();
    assert!(matches!(r.error, Error::ParamSetChanged(_)), "{r}");
    assert!(optim.is_train_mode());
    assert_eq!(ids(&r.module), other_ids, "the model given back");
    assert_eq!(values(&r.module), values(&model));
    assert_eq!(optim.step_count(), 3);

    // eval: the average x, from the GPU's own z; a second eval changes nothing. The
    // parameters the last step wrote are not copied in, but one (whose resolve runs what
    // Burn queued); work queued on them before the switch still reads y, though the switch
    // writes in place.
    let z = z_of(&optim);
    let (x_batch, _) = batch(7, 0, &device);
    let y_model = mlp(&values(&model), &device);
    let want = y_model.forward(x_batch.clone()).into_data();
    let queued = model.forward(x_batch);
    let want_scaled = y_model.fc2.weight.val().mul_scalar(2.0).into_data();
    let queued_scaled = model.fc2.weight.val().mul_scalar(2.0);
    model = optim.eval(model).unwrap();
    assert_eq!(optim.last_copies_in(), 1, "one parameter copied in");
    assert_eq!(optim.last_writes(), (4, 0), "written in place");
    assert_eq!(
        queued.into_data(),
        want,
        "the forward pass queued before eval read y"
    );
    assert_eq!(
        queued_scaled.into_data(),
        want_scaled,
        "an elementwise op queued before eval read y"
    );
    switch(&mut p, &z, 1.0 - 1.0 / beta1);
    check("x after eval", &model, &p);
    let x = values(&model);
    model = optim.eval(model).unwrap();
    assert_eq!(values(&model), x, "eval in eval mode is a no-op");
    in_eval(
        optim
            .step(1e-2, model.clone(), grads_of(&model, &all(&g), &device))
            .unwrap_err(),
    );
    assert_eq!(optim.step_count(), 3, "nothing stepped");
    assert_eq!(values(&model), x, "nothing changed");

    // train: back to y, and the run goes on as the reference's.
    let r = optim.try_train(mlp(&x, &device)).unwrap_err();
    assert!(matches!(r.error, Error::ParamSetChanged(_)), "{r}");
    assert!(!optim.is_train_mode(), "still in eval mode");
    assert_eq!(values(&r.module), x);
    // A parameter the model replaced since is copied in as well.
    let w = model.fc2.weight.clone();
    let (id, t) = (w.id, w.val());
    model.fc2.weight = Param::initialized(id, t.mul_scalar(1.0).detach().require_grad());
    model = optim.try_train(model).unwrap();
    assert_eq!(
        optim.last_copies_in(),
        2,
        "fc1.weight and the replaced fc2.weight"
    );
    switch(&mut p, &z, 1.0 - beta1);
    check("y after train", &model, &p);
    model = step(&mut optim, model, &mut p, &mut states, &mut rng);
    assert_eq!(optim.step_count(), 4);
    check("y after a 4th step", &model, &p);
    eprintln!("schedule-free: eval and train as the reference's switches, steps go on");
}

#[test]
fn eight_bit_and_bf16_state_step_a_burn_model_as_the_fused_optimizer_does() {
    let (device, gpu) = setup();
    let mut rng = common::rng("eight_bit_state");
    let start = init_values(&mut rng);
    let cfg = AdamConfig::adamw();
    let all = |g: &[Vec<f32>]| g.iter().cloned().map(Some).collect::<Vec<_>>();
    let random_grads = |rng: &mut StdRng| -> Vec<Vec<f32>> {
        start.iter().map(|t| randn(rng, t.len(), 1.0)).collect()
    };
    let f32_bytes = {
        let mut dense = BurnOptimizer::new(cfg.clone());
        let model = mlp(&start, &device);
        let g = random_grads(&mut rng);
        dense
            .step(1e-3, model.clone(), grads_of(&model, &all(&g), &device))
            .unwrap();
        dense.optimizer().unwrap().state_memory_bytes()
    };
    let bf16 = Precision {
        state: DType::Bf16,
        ..Default::default()
    };
    // 8-bit state for the two weights (91 and 39 elements), f32 for the biases.
    let eight_bit = StateFormat::Blockwise8 { min_size: 32 };
    for (label, format, precision) in [
        ("8-bit", eight_bit, Precision::default()),
        ("bf16", StateFormat::Dense, bf16),
    ] {
        let mut optim = BurnOptimizer::new(cfg.clone())
            .with_state_format(format)
            .with_precision(precision);
        assert_eq!(optim.state_format(), format);
        let mut model = mlp(&start, &device);
        // The same tensors as our own Params, stepped by the fused optimizer alone.
        let builder = Params::builder(&gpu);
        let builder = (0..4).fold(builder, |b, k| {
            b.tensor_with_data(PATHS[k], &shapes()[k], DType::F32, &start[k])
        });
        let mut params = builder.build().unwrap();
        let mut plain = FusedOptimizer::new(&params, cfg.clone()).unwrap();
        plain.set_precision(precision).unwrap();
        plain.set_state_format(format).unwrap();
        for s in 0..4 {
            let g = random_grads(&mut rng);
            let grads = grads_of(&model, &all(&g), &device);
            model = optim.step(cfg.lr as f64, model, grads).unwrap();
            for (k, g) in g.iter().enumerate() {
                params.write_grad(PATHS[k], g).unwrap();
            }
            plain.step(&mut params).unwrap();
            for (k, got) in values(&model).iter().enumerate() {
                let want = params.read(PATHS[k]).unwrap();
                compare(&format!("{label} step {s} {}", PATHS[k]), got, &want, Bits);
            }
        }
        let opt = optim.optimizer().unwrap();
        assert_eq!(opt.state_format(), format, "{label}");
        assert_eq!(opt.precision().state, precision.state, "{label}");
        for key in ["exp_avg", "exp_avg_sq"] {
            for path in PATHS {
                let (a, b) = (
                    opt.state(key, path).unwrap(),
                    plain.state(key, path).unwrap(),
                );
                compare(&format!("{label} {key} of {path}"), &a, &b, Bits);
            }
        }
        // A checkpoint resumes into the same format, bit for bit; into another it is refused.
        let file = std::env::temp_dir().join(format!(
            "wgpu-optim-burn-state-{}-{}.safetensors",
            &label[..2],
            std::process::id()
        ));
        optim.save(&file).unwrap();
        let configured = || {
            BurnOptimizer::new(cfg.clone())
                .with_state_format(format)
                .with_precision(precision)
        };
        let mut back = configured();
        back.load(&file, mlp(&start, &device)).unwrap();
        let mut dense = BurnOptimizer::new(cfg.clone());
        let e = dense.load(&file, mlp(&start, &device)).unwrap_err();
        assert!(dense.optimizer().is_none(), "{label}: {e}");
        let _ = std::fs::remove_file(&file);
        for key in ["exp_avg", "exp_avg_sq"] {
            for path in PATHS {
                let resumed = back.optimizer().unwrap().state(key, path).unwrap();
                let ours = opt.state(key, path).unwrap();
                compare(
                    &format!("{label} resumed {key} of {path}"),
                    &resumed,
                    &ours,
                    Bits,
                );
            }
        }
        let bytes = opt.state_memory_bytes();
        assert_eq!(bytes, plain.state_memory_bytes(), "{label}");
        assert!(
            bytes < f32_bytes,
            "{label}: {bytes} bytes of state, f32 {f32_bytes}"
        );
        eprintln!("{label}: as the fused optimizer, {bytes} bytes of state (f32: {f32_bytes})");
    }

    // An optimizer without an 8-bit form: a typed error of the first step, nothing laid out.
    let mut optim =
        BurnOptimizer::new(AdafactorConfig::default()).with_state_format(StateFormat::blockwise8());
    let model = mlp(&start, &device);
    let g = random_grads(&mut rng);
    let e = optim
        .step(1e-2, model.clone(), grads_of(&model, &all(&g), &device))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    assert!(optim.optimizer().is_none(), "nothing was laid out");
    eprintln!("{e}");
}

#[test]
fn global_norm_clipping_is_clip_grad_norm_not_burns_per_tensor_clipping() {
    let (device, gpu) = setup();
    let mut rng = common::rng("global_norm_clipping");
    let start = init_values(&mut rng);
    // Tensors of very different norms: each one's own norm is above max_norm too.
    let scales = [3.0f32, 0.5, 2.0, 1.0];
    let g: Vec<Vec<f32>> = start
        .iter()
        .zip(scales)
        .map(|(t, s)| randn(&mut rng, t.len(), s))
        .collect();
    let max_norm = 0.25f32;
    let lr = 0.5f64;
    let cfg = SgdConfig {
        lr: lr as f32,
        ..Default::default()
    };

    // Ours: one global coefficient, torch's clip_grad_norm_.
    let model = mlp(&start, &device);
    let mut optim = BurnOptimizer::new(cfg.clone()).with_max_grad_norm(max_norm);
    let grads = grads_of(
        &model,
        &g.iter().cloned().map(Some).collect::<Vec<_>>(),
        &device,
    );
    let model = optim.step(lr, model, grads).unwrap();
    let opt = optim.optimizer().unwrap();
    let gpu_norm = opt.last_grad_norm().unwrap();
    let arrays = to_arrays(g.clone());
    let want_norm =
        reference::grad_norm(&arrays.iter().collect::<Vec<_>>(), NormType::L2, 1.0).unwrap();
    assert!(
        ((gpu_norm as f64 - want_norm) / want_norm).abs() <= 1e-5,
        "global norm {gpu_norm} vs {want_norm}"
    );
    let coef = reference::clip_coef(gpu_norm, max_norm);
    assert!(coef < 0.2, "the step clips: coefficient {coef}");
    let mut p = to_arrays(start.clone());
    let mut states: Vec<State> = p.iter().map(|t| State::new(&cfg, t.len())).collect();
    reference_step(reference::sgd, &cfg, &mut p, &g, &mut states, coef);
    let ours = values(&model);
    for k in 0..4 {
        compare(
            &format!("clipped {}", PATHS[k]),
            &ours[k],
            p[k].as_slice().unwrap(),
            bound(&gpu),
        );
    }

    // Burn's SGD with GradientClippingConfig::Norm clips each tensor by its own norm.
    let model_b = mlp(&start, &device);
    let mut burn_sgd = BurnSgdConfig::new()
        .with_gradient_clipping(Some(GradientClippingConfig::Norm(max_norm)))
        .init();
    let grads = grads_of(
        &model_b,
        &g.iter().cloned().map(Some).collect::<Vec<_>>(),
        &device,
    );
    let theirs = values(&burn_sgd.step(lr, model_b, grads));
    let tol = Bound::Within {
        atol: 1e-6,
        rtol: 1e-5,
    };
    for k in 0..4 {
        let norm_k = g[k].iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let coef_k = (max_norm as f64 / (norm_k + f32::MIN_POSITIVE as f64)).min(1.0);
        let want: Vec<f32> = start[k]
            .iter()
            .zip(&g[k])
            .map(|(&w, &gk)| (w as f64 - lr * coef_k * gk as f64) as f32)
            .collect();
        compare(
            &format!("Burn per-tensor {}", PATHS[k]),
            &theirs[k],
            &want,
            tol,
        );
        // Per tensor, each update has norm lr * max_norm; globally all share one coefficient,
        // so each moves by lr * coef * its own norm.
        let moved = |v: &[f32]| {
            v.iter()
                .zip(&start[k])
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let (ours_k, theirs_k) = (moved(&ours[k]), moved(&theirs[k]));
        let want_k = lr * coef as f64 * norm_k;
        assert!(
            (theirs_k - lr * max_norm as f64).abs() < 1e-5,
            "Burn moves {} by lr * max_norm: {theirs_k}",
            PATHS[k]
        );
        assert!(
            (ours_k - want_k).abs() <= 1e-5 * want_k,
            "{}: global clipping moved it {ours_k}, lr * coef * norm is {want_k}",
            PATHS[k]
        );
        assert!(
            (ours_k - theirs_k).abs() > 5e-3,
            "{}: global clipping moved it {ours_k}, Burn's per-tensor clipping {theirs_k}",
            PATHS[k]
        );
        eprintln!(
            "{}: norm {norm_k:.4}; moved {ours_k:.5} (global clip), {theirs_k:.5} (Burn, per tensor)",
            PATHS[k]
        );
    }
}

#[test]
fn nonfinite_gradients_skip_the_step() {
    let (device, _gpu) = setup();
    let mut rng = common::rng("nonfinite_gradients_skip");
    let start = init_values(&mut rng);
    let model = mlp(&start, &device);
    let mut optim = BurnOptimizer::new(AdamConfig::default()).with_skip_nonfinite(true);
    let mut g: Vec<Vec<f32>> = start
        .iter()
        .map(|t| randn(&mut rng, t.len(), 1.0))
        .collect();
    g[2][5] = f32::NAN;
    let grads = grads_of(
        &model,
        &g.into_iter().map(Some).collect::<Vec<_>>(),
        &device,
    );
    let model = optim.step(1e-3, model, grads).unwrap();
    assert!(optim.optimizer().unwrap().last_step_skipped().unwrap());
    for (k, got) in values(&model).iter().enumerate() {
        compare(PATHS[k], got, &start[k], Bound::Bits);
    }
}

#[test]
fn a_missing_gradient_leaves_its_parameter_and_the_lr_argument_wins() {
    let (device, gpu) = setup();
    let mut rng = common::rng("missing_gradient");
    let start = init_values(&mut rng);
    let model = mlp(&start, &device);
    // The config's lr is 0.5; the step's lr (a Burn scheduler's) wins.
    let mut optim = BurnOptimizer::new(SgdConfig {
        lr: 0.5,
        ..Default::default()
    });
    let g: Vec<Option<Vec<f32>>> = vec![
        Some(randn(&mut rng, start[0].len(), 1.0)),
        None,
        Some(randn(&mut rng, start[2].len(), 1.0)),
        None,
    ];
    let grads = grads_of(&model, &g, &device);
    let model = optim.step(0.125, model, grads).unwrap();
    let cfg = SgdConfig {
        lr: 0.125,
        ..Default::default()
    };
    let got = values(&model);
    for k in 0..4 {
        let mut want = Array1::from(start[k].clone());
        if let Some(gk) = &g[k] {
            reference::sgd(
                &cfg,
                &mut want,
                &Array1::from(gk.clone()),
                &mut State::new(&cfg, 0),
            );
        }
        let b = if g[k].is_some() {
            bound(&gpu)
        } else {
            Bound::Bits
        };
        compare(PATHS[k], &got[k], want.as_slice().unwrap(), b);
    }
    assert_eq!(optim.optimizer().unwrap().lr(), 0.125);
}

#[test]
fn groups_by_module_path() {
    let (device, gpu) = setup();
    let mut rng = common::rng("groups_by_module_path");
    let start = init_values(&mut rng);
    let decay = SgdConfig {
        lr: 0.1,
        weight_decay: 0.5,
        momentum: 0.9,
        ..Default::default()
    };
    let no_decay = SgdConfig {
        weight_decay: 0.0,
        ..decay.clone()
    };
    let mut model = mlp(&start, &device);
    let mut optim = BurnOptimizer::with_groups(vec![
        ParamGroup::matching(|path| path.ends_with(".bias"), no_decay.clone()),
        ParamGroup::rest(decay.clone()),
    ]);
    let mut p = to_arrays(start.clone());
    let mut states: Vec<State> = p.iter().map(|t| State::new(&decay, t.len())).collect();
    for s in 0..3 {
        let g: Vec<Vec<f32>> = p.iter().map(|t| randn(&mut rng, t.len(), 1.0)).collect();
        let grads = grads_of(
            &model,
            &g.iter().cloned().map(Some).collect::<Vec<_>>(),
            &device,
        );
        model = optim.step(0.1, model, grads).unwrap();
        for k in 0..4 {
            let cfg = if PATHS[k].ends_with(".bias") {
                &no_decay
            } else {
                &decay
            };
            reference::sgd(cfg, &mut p[k], &Array1::from(g[k].clone()), &mut states[k]);
        }
        for (k, got) in values(&model).iter().enumerate() {
            compare(
                &format!("step {s} {}", PATHS[k]),
                got,
                p[k].as_slice().unwrap(),
                bound(&gpu),
            );
        }
    }
    let opt = optim.optimizer().unwrap();
    assert_eq!(opt.group_of("fc2.bias").unwrap(), 0);
    assert_eq!(opt.group_of("fc1.weight").unwrap(), 1);
}

#[test]
fn exclusive_parameters_are_written_in_place_shared_ones_into_fresh_tensors() {
    let (device, _gpu) = setup();
    let mut rng = common::rng("in_place_or_fresh");
    let start = init_values(&mut rng);
    let cfg = SgdConfig {
        lr: 0.1,
        ..Default::default()
    };
    let mut optim = BurnOptimizer::new(cfg);
    let model = mlp(&start, &device);
    // A clone of the model shares every parameter tensor: they go to fresh tensors, and the
    // clone keeps the old values.
    let kept = model.clone();
    let g: Vec<Vec<f32>> = start
        .iter()
        .map(|t| randn(&mut rng, t.len(), 1.0))
        .collect();
    let grads = grads_of(
        &model,
        &g.iter().cloned().map(Some).collect::<Vec<_>>(),
        &device,
    );
    let model = optim.step(0.1, model, grads).unwrap();
    assert_eq!(optim.last_writes(), (0, 4));
    for (k, got) in values(&kept).iter().enumerate() {
        compare(
            &format!("the clone's {}", PATHS[k]),
            got,
            &start[k],
            Bound::Bits,
        );
    }
    let after_first = values(&model);
    drop(kept);
    // Nothing else refers to them now: in place.
    let grads = grads_of(
        &model,
        &g.iter().cloned().map(Some).collect::<Vec<_>>(),
        &device,
    );
    let model = optim.step(0.1, model, grads).unwrap();
    assert_eq!(optim.last_writes(), (4, 0));
    let after_second = values(&model);
    for k in 0..4 {
        assert_ne!(after_first[k], after_second[k], "{} moved", PATHS[k]);
    }
}

/// A parameter still the tensor the last step wrote is not copied in again; one the model
/// replaced, or one the last step did not write (no gradient: the arena's copy moved with the
/// momentum), is. SGD with momentum against the reference, step by step.
#[test]
fn parameters_are_copied_in_only_where_the_model_changed_them() {
    let (device, gpu) = setup();
    let mut rng = common::rng("copied_in_only_where_changed");
    let start = init_values(&mut rng);
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..Default::default()
    };
    let mut optim = BurnOptimizer::new(cfg.clone());
    let mut model = mlp(&start, &device);
    let mut p = to_arrays(start.clone());
    let mut states: Vec<State> = p.iter().map(|t| State::new(&cfg, t.len())).collect();
    // (which gradients the step has, the copies in it makes, its writes (in place, fresh)).
    let plan: [(&[usize], usize, (usize, usize)); 5] = [
        (&[0, 1, 2, 3], 4, (4, 0)), // the first step copies every parameter in
        (&[0, 2, 3], 0, (3, 0)),    // fc1.bias has no gradient: not written back
        (&[0, 1, 2, 3], 2, (4, 0)), // fc1.bias (not written) and fc2.weight (replaced)
        (&[0, 1, 2, 3], 0, (0, 4)), // a clone is alive: fresh tensors
        (&[0, 1, 2, 3], 0, (4, 0)), // the fresh tensors are the ones written
    ];
    for (s, (with, copies, writes)) in plan.into_iter().enumerate() {
        if s == 2 {
            // The model replaces fc2.weight by half of it: a new tensor.
            let w = model.fc2.weight.clone();
            let (id, t) = (w.id, w.val());
            model.fc2.weight = Param::initialized(id, t.mul_scalar(0.5).detach().require_grad());
            p[2].mapv_inplace(|x| x * 0.5);
        }
        let kept = (s == 3).then(|| model.clone());
        let g: Vec<Option<Vec<f32>>> = (0..4)
            .map(|k| {
                with.contains(&k)
                    .then(|| randn(&mut rng, start[k].len(), 1.0))
            })
            .collect();
        let grads = grads_of(&model, &g, &device);
        model = optim.step(0.1, model, grads).unwrap();
        drop(kept);
        for k in 0..4 {
            match &g[k] {
                Some(gk) => {
                    reference::sgd(&cfg, &mut p[k], &Array1::from(gk.clone()), &mut states[k])
                }
                // The arena's copy moves with the momentum; the model's does not.
                None => {
                    let zero = Array1::zeros(p[k].len());
                    reference::sgd(&cfg, &mut p[k].clone(), &zero, &mut states[k]);
                }
            }
        }
        for (k, got) in values(&model).iter().enumerate() {
            compare(
                &format!("step {s} {}", PATHS[k]),
                got,
                p[k].as_slice().unwrap(),
                bound(&gpu),
            );
        }
        assert_eq!(optim.last_copies_in(), copies, "step {s}: copies in");
        assert_eq!(optim.last_writes(), writes, "step {s}: writes");
    }
}

#[test]
fn errors_before_any_gpu_work() {
    let (device, _gpu) = setup();
    let mut rng = common::rng("errors_before_any_gpu_work");
    let start = init_values(&mut rng);
    let all = |m: &Mlp, rng: &mut StdRng| {
        let g: Vec<Option<Vec<f32>>> = start
            .iter()
            .map(|t| Some(randn(rng, t.len(), 1.0)))
            .collect();
        grads_of(m, &g, &device)
    };

    // A model whose parameters changed since the first step.
    let mut optim = BurnOptimizer::new(AdamConfig::default());
    let model = mlp(&start, &device);
    let grads = all(&model, &mut rng);
    optim.step(1e-3, model, grads).unwrap();
    let other = mlp(&start, &device); // new ParamIds
    let grads = all(&other, &mut rng);
    let e = optim.step(1e-3, other, grads).unwrap_err();
    assert!(matches!(e, Error::ParamSetChanged(_)), "{e}");
    eprintln!("{e}");

    // A parameter reshaped since the first step (its id and length the same): Adafactor's
    // state is laid out for the old shape.
    let mut optim = BurnOptimizer::new(AdafactorConfig::default());
    let mut model = mlp(&start, &device);
    let grads = all(&model, &mut rng);
    model = optim.step(1e-3, model, grads).unwrap();
    let before = values(&model);
    let [i, h, _] = DIMS;
    let (id, w) = (model.fc1.weight.id, model.fc1.weight.val());
    model.fc1.weight = Param::initialized(id, w.reshape([h, i]));
    let mut grads = GradientsParams::new();
    let g = TensorData::new(randn(&mut rng, i * h, 1.0), [h, i]);
    grads.register(id, Tensor::<2>::from_data(g, &device.clone().inner()));
    let e = optim.step(1e-3, model.clone(), grads).unwrap_err();
    assert!(
        matches!(&e, Error::ParamSetChanged(m) if m.contains("shape")),
        "{e}"
    );
    assert_eq!(optim.step_count(), 1, "nothing stepped");
    assert_eq!(values(&model), before, "nothing changed");
    eprintln!("{e}");

    // A gradient that is not f32.
    let model = mlp(&start, &device);
    let mut grads = all(&model, &mut rng);
    let bias_id = model.fc1.bias.as_ref().unwrap().id;
    grads.remove::<1>(bias_id);
    let half = Tensor::<1>::from_data(
        TensorData::new(start[1].clone(), [DIMS[1]]),
        (&device.clone().inner(), burn::tensor::DType::F16),
    );
    assert_eq!(half.dtype(), burn::tensor::DType::F16);
    grads.register(bias_id, half);
    let mut fresh = BurnOptimizer::new(AdamConfig::default());
    let e = fresh.step(1e-3, model, grads).unwrap_err();
    assert!(
        matches!(&e, Error::BurnDtype { param, .. } if param == "fc1.bias"),
        "{e}"
    );
    assert!(fresh.optimizer().is_none(), "nothing was laid out");
    eprintln!("{e}");

    // A negative learning rate.
    let model = mlp(&start, &device);
    let grads = all(&model, &mut rng);
    let mut fresh = BurnOptimizer::new(SgdConfig::default());
    let e = fresh.step(-1.0, model, grads).unwrap_err();
    assert!(matches!(e, Error::InvalidHyperparameter { .. }), "{e}");

    // A model on a wgpu device that was not set up with `init`: Burn's own runtime on a
    // device and queue of its own.
    let setup = own_setup();
    let unknown = Device::new(burn_cubecl::CubeDevice::Wgpu(
        cubecl::wgpu::try_init_device(setup, Default::default()).unwrap(),
    ))
    .autodiff();
    let model = mlp(&start, &unknown);
    let grads = {
        let g: Vec<Option<Vec<f32>>> = start
            .iter()
            .map(|t| Some(randn(&mut rng, t.len(), 1.0)))
            .collect();
        grads_of(&model, &g, &unknown)
    };
    let mut fresh = BurnOptimizer::new(SgdConfig::default());
    let e = fresh.step(0.1, model, grads).unwrap_err();
    assert!(
        matches!(&e, Error::BurnTensor { reason, .. } if reason.contains("wgpu_optim::burn::init")),
        "{e}"
    );
    eprintln!("{e}");
}

/// `try_step` gives the model back with each error raised before any GPU work, the optimizer
/// unchanged: the run goes on from the returned model as if the refused steps had not been
/// tried, and the model's handles are still its own (the next step writes in place).
#[test]
fn try_step_gives_the_model_back_with_the_error() {
    let (device, _gpu) = setup();
    let mut rng = common::rng("try_step_gives_the_model_back_with_the_error");
    let start = init_values(&mut rng);
    let grads: Vec<Vec<Option<Vec<f32>>>> = (0..2)
        .map(|_| {
            start
                .iter()
                .map(|t| Some(randn(&mut rng, t.len(), 1.0)))
                .collect()
        })
        .collect();

    // Two steps, no error in between.
    let mut straight = BurnOptimizer::new(AdamConfig::default());
    let mut want = mlp(&start, &device);
    for g in &grads {
        let gp = grads_of(&want, g, &device);
        want = straight.step(1e-3, want, gp).unwrap();
    }

    // The same two steps with refused ones between them.
    let mut optim = BurnOptimizer::new(AdamConfig::default());
    let mut model = mlp(&start, &device);
    // A refused first step lays nothing out: the optimizer is as new.
    let gp = grads_of(&model, &grads[0], &device);
    let r = optim.try_step(f64::NAN, model, gp).unwrap_err();
    assert!(
        matches!(r.error, Error::InvalidHyperparameter { .. }),
        "{r}"
    );
    assert!(
        optim.optimizer().is_none(),
        "no arena after a refused first step"
    );
    model = r.module;
    assert_eq!(values(&model), start);
    let gp = grads_of(&model, &grads[0], &device);
    model = optim.try_step(1e-3, model, gp).unwrap();
    let before = values(&model);
    let ids_before = ids(&model);

    // An invalid learning rate.
    let gp = grads_of(&model, &grads[1], &device);
    let r = optim.try_step(-1.0, model, gp).unwrap_err();
    assert!(
        matches!(r.error, Error::InvalidHyperparameter { .. }),
        "{r}"
    );
    assert_eq!(r.to_string(), r.error.to_string());
    model = r.module;
    // A gradient that is not f32.
    let mut gp = grads_of(&model, &grads[1], &device);
    let bias_id = model.fc1.bias.as_ref().unwrap().id;
    gp.remove::<1>(bias_id);
    let half = Tensor::<1>::from_data(
        TensorData::new(start[1].clone(), [DIMS[1]]),
        (&device.clone().inner(), burn::tensor::DType::F16),
    );
    gp.register(bias_id, half);
    let r = optim.try_step(1e-3, model, gp).unwrap_err();
    assert!(matches!(r.error, Error::BurnDtype { .. }), "{r}");
    model = r.module;
    // `?` turns the rejection into the crate's error.
    let gp = grads_of(&model, &grads[1], &device);
    let via_question_mark =
        |optim: &mut BurnOptimizer<AdamConfig>, m: Mlp| -> wgpu_optim::Result<Mlp> {
            Ok(optim.try_step(f64::NAN, m, gp)?)
        };
    let clone = model.clone();
    let e = via_question_mark(&mut optim, clone).unwrap_err();
    assert!(matches!(e, Error::InvalidHyperparameter { .. }), "{e}");

    assert_eq!(optim.step_count(), 1, "nothing stepped");
    assert_eq!(values(&model), before, "the model as it was");
    assert_eq!(ids(&model), ids_before, "the same parameters");

    // The run goes on from the returned model, in place, to the same values.
    let gp = grads_of(&model, &grads[1], &device);
    model = optim.try_step(1e-3, model, gp).unwrap();
    assert_eq!(
        optim.last_writes(),
        (4, 0),
        "every parameter written in place"
    );
    assert_eq!(optim.step_count(), 2);
    let (got, want) = (values(&model), values(&want));
    for (k, (a, b)) in got.iter().zip(&want).enumerate() {
        compare(&format!("tensor {k}"), a, b, Bits);
    }

    // A configuration the first step refuses (Adafactor has no 8-bit form): the model comes
    // back and nothing is laid out.
    let mut fresh = BurnOptimizer::new(AdafactorConfig::default())
        .with_state_format(wgpu_optim::StateFormat::blockwise8());
    let m = mlp(&start, &device);
    let gp = grads_of(&m, &grads[0], &device);
    let r = fresh.try_step(1e-3, m, gp).unwrap_err();
    assert!(matches!(r.error, Error::InvalidOptions(_)), "{r}");
    assert!(fresh.optimizer().is_none(), "nothing was laid out");
    assert_eq!(values(&r.module), start, "the model as it was");
}

/// A wgpu device and queue of our own on the default adapter, for Burn to adopt.
fn own_setup() -> cubecl::wgpu::WgpuSetup {
    use wgpu_optim::wgpu;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");
    cubecl::wgpu::WgpuSetup {
        backend: adapter.get_info().backend,
        instance,
        adapter,
        device,
        queue,
    }
}

/// Train `steps` steps of the regression MLP from `start`, beginning at step `from` (lr 3e-3).
fn train(
    seed: u64,
    from: usize,
    steps: usize,
    model: Mlp,
    optim: &mut BurnOptimizer<AdamConfig>,
    device: &Device,
) -> Mlp {
    train_at(3e-3, seed, from, steps, model, optim, device)
}

/// [`train`] at learning rate `lr`, with any optimizer.
fn train_at<C: OptimizerConfig>(
    lr: f64,
    seed: u64,
    from: usize,
    steps: usize,
    mut model: Mlp,
    optim: &mut BurnOptimizer<C>,
    device: &Device,
) -> Mlp {
    for s in from..from + steps {
        let (x, y) = batch(seed, s, device);
        let loss = mse(&model, x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads).unwrap();
    }
    model
}

const RESUME_ENV: &str = "WGPU_OPTIM_BURN_RESUME";

fn resume_config() -> AdamConfig {
    AdamConfig {
        lr: 3e-3,
        weight_decay: 1e-2,
        decoupled_weight_decay: true,
        ..Default::default()
    }
}

#[test]
fn checkpoint_resume_in_a_fresh_process() {
    let (device, _gpu) = setup();
    if let Ok(spec) = std::env::var(RESUME_ENV) {
        // The resumed half, in its own process: load, train on, write the params.
        let (seed, dir) = spec.split_once(':').unwrap();
        let seed: u64 = seed.parse().unwrap();
        let dir = std::path::Path::new(dir);
        let start = init_values(&mut StdRng::seed_from_u64(seed));
        let mut optim = BurnOptimizer::new(resume_config()).with_max_grad_norm(1.0);
        let model = optim
            .load(dir.join("half.safetensors"), mlp(&start, &device))
            .unwrap();
        assert_eq!(optim.step_count(), 6);
        let model = train(seed, 6, 6, model, &mut optim, &device);
        std::fs::write(
            dir.join("resumed.json"),
            serde_json::to_string(&values(&model)).unwrap(),
        )
        .unwrap();
        return;
    }
    let mut rng = common::rng("checkpoint_resume");
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut StdRng::seed_from_u64(seed));
    let dir = std::env::temp_dir().join(format!("wgpu-optim-burn-resume-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();

    // Uninterrupted: 12 steps.
    let mut optim = BurnOptimizer::new(resume_config()).with_max_grad_norm(1.0);
    let whole = values(&train(
        seed,
        0,
        12,
        mlp(&start, &device),
        &mut optim,
        &device,
    ));

    // 6 steps, a checkpoint, and the other 6 in a fresh process.
    let mut optim = BurnOptimizer::new(resume_config()).with_max_grad_norm(1.0);
    let _half = train(seed, 0, 6, mlp(&start, &device), &mut optim, &device);
    optim.save(dir.join("half.safetensors")).unwrap();

    // `try_load` gives the model back, the optimizer unchanged, when there is nothing to
    // resume from or the file is not this model's; then it resumes.
    let mut resumed = BurnOptimizer::new(resume_config()).with_max_grad_norm(1.0);
    let model = mlp(&start, &device);
    let model_ids = ids(&model);
    let r = resumed
        .try_load(dir.join("missing.safetensors"), model)
        .unwrap_err();
    assert!(matches!(r.error, Error::Io { .. }), "{r}");
    assert!(resumed.optimizer().is_none(), "nothing laid out");
    assert_eq!(
        (ids(&r.module), values(&r.module)),
        (model_ids, start.clone())
    );
    let r = resumed
        .try_load(dir.join("half.safetensors"), r.module.fc1)
        .unwrap_err();
    assert!(matches!(r.error, Error::CheckpointMismatch { .. }), "{r}");
    assert!(resumed.optimizer().is_none(), "nothing laid out");
    assert_eq!(r.module.weight.id, model_ids[0]);
    let model = resumed
        .try_load(dir.join("half.safetensors"), mlp(&start, &device))
        .unwrap();
    assert_eq!(resumed.step_count(), 6);
    assert_ne!(values(&model), start, "the saved parameters");

    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "checkpoint_resume_in_a_fresh_process",
            "--nocapture",
        ])
        .env(RESUME_ENV, format!("{seed}:{}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the resumed process failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed: Vec<Vec<f32>> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("resumed.json")).unwrap()).unwrap();
    for k in 0..4 {
        compare(
            &format!("resumed {}", PATHS[k]),
            &resumed[k],
            &whole[k],
            Bound::Bits,
        );
    }
    assert_ne!(whole[0], start[0]);
    std::fs::remove_dir_all(&dir).ok();
}

/// AdamW at lr 1e-2 as both optimizers name it: ours and Burn's.
fn adamw_config() -> AdamConfig {
    AdamConfig {
        lr: 1e-2,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 1e-2,
        decoupled_weight_decay: true,
        ..Default::default()
    }
}

fn burn_adamw() -> burn::optim::ModuleOptimizer {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(1e-2)
        .init()
}

/// One moment in a Burn Adam/AdamW record: the tensor's name, its parameter id, shape, the
/// index of its parameter in `PATHS`, our state key for it, and its values.
struct Moment {
    name: String,
    id: String,
    param_id: Option<u64>,
    shape: Vec<usize>,
    k: usize,
    key: &'static str,
    values: Vec<f32>,
}

/// The moments a Burn record holds for `model`'s parameters.
fn record_moments(reader: burn_pack::Reader, model: &Mlp) -> Vec<Moment> {
    let mut out = Vec::new();
    for t in reader.into_tensors().unwrap() {
        let (name, _, shape, param_id, bytes) = t.into_parts().unwrap();
        let (id, leaf) = name.split_once('.').unwrap();
        let k = ids(model)
            .iter()
            .position(|p| p.val().to_string() == id)
            .unwrap();
        let key = match leaf {
            "momentum.moment_1" => "exp_avg",
            "momentum.moment_2" => "exp_avg_sq",
            other => panic!("unexpected leaf {other}"),
        };
        let values = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        out.push(Moment {
            id: id.to_string(),
            name,
            param_id,
            shape: shape.to_vec(),
            k,
            key,
            values,
        });
    }
    out
}

/// Burn's AdamW for `steps` steps from `start`, the run the record tests compare against.
fn burn_uninterrupted(seed: u64, steps: usize, start: &[Vec<f32>], device: &Device) -> Mlp {
    burn_train(
        seed,
        0,
        steps,
        mlp(start, device),
        &mut burn_adamw(),
        device,
    )
}

/// The rounding difference between our AdamW and Burn's over a few steps (see
/// `adamw_in_a_burn_loop_matches_the_reference_and_burns_adamw`).
const BURN_ADAMW_TOL: Bound = Bound::Within {
    atol: 2e-5,
    rtol: 1e-4,
};

/// Burn's AdamW from `model`, on the batches `from..from + steps` (lr 1e-2).
fn burn_train(
    seed: u64,
    from: usize,
    steps: usize,
    mut model: Mlp,
    optim: &mut burn::optim::ModuleOptimizer,
    device: &Device,
) -> Mlp {
    for s in from..from + steps {
        let (x, y) = batch(seed, s, device);
        let loss = mse(&model, x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    model
}

#[test]
fn a_burn_record_of_our_state_goes_on_in_burns_adamw() {
    let (device, _gpu) = setup();
    let mut rng = common::rng("burn_record");
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut rng);
    let cfg = adamw_config();
    let (first, then) = (8, 8);

    // Before the first step there is nothing to write.
    let mut optim = BurnOptimizer::new(cfg.clone());
    let dir = std::env::temp_dir().join(format!("wgpu-optim-burn-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = optim.save_burn_record(dir.join("none")).unwrap_err();
    assert!(matches!(e, Error::Empty(_)), "{e}");

    // `first` steps here, then the state as a Burn record.
    let mut model = mlp(&start, &device);
    for s in 0..first {
        let (x, y) = batch(seed, s, &device);
        let loss = mse(&model, x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads).unwrap();
    }
    let path = dir.join("optim");
    optim.save_burn_record(&path).unwrap();
    let file = dir.join("optim.bpk");
    assert!(file.exists(), "Burn's extension added");

    // Burn reads every state tensor: its own record of what it loaded holds our values bit
    // for bit, the step count and the module paths.
    let mut loaded = burn_adamw().load(&file).unwrap();
    let record = loaded.to_record();
    assert_eq!(record.len(), 8, "two moments for each of the 4 parameters");
    let reader = burn_pack::Reader::from_bytes(record.into_bytes().unwrap()).unwrap();
    let scalars = reader.scalars().clone();
    let paths = reader.metadata().clone();
    let opt = optim.optimizer().unwrap();
    let moments = record_moments(reader, &model);
    assert_eq!(moments.len(), 8);
    for m in &moments {
        assert_eq!(m.param_id.unwrap().to_string(), m.id);
        assert_eq!(paths[&m.id], PATHS[m.k]);
        assert_eq!(m.shape, shapes()[m.k], "{}", m.name);
        assert_eq!(
            u64::try_from(scalars[&format!("{}.momentum.time", m.id)]).unwrap(),
            first as u64
        );
        let ours = opt.state(m.key, PATHS[m.k]).unwrap();
        compare(&m.name, &m.values, &ours, Bound::Bits);
    }

    // Burn goes on from our state as it would from its own: against Burn's AdamW run for
    // `first + then` steps from the start, within the rounding difference of the two (see
    // `adamw_in_a_burn_loop_matches_the_reference_and_burns_adamw`); a fresh Burn AdamW from
    // the same parameters (no state) is far outside it.
    let go_on = burn_train(seed, first, then, model.clone(), &mut loaded, &device);
    let mut fresh = burn_adamw();
    let restarted = burn_train(seed, first, then, model, &mut fresh, &device);
    let uninterrupted = burn_uninterrupted(seed, first + then, &start, &device);
    let tol = BURN_ADAMW_TOL;
    let (a, b, c) = (values(&go_on), values(&uninterrupted), values(&restarted));
    let (mut worst, mut restart_worst) = (0.0f32, 0.0f32);
    for k in 0..4 {
        worst = worst.max(compare(
            &format!("{} resumed in Burn", PATHS[k]),
            &a[k],
            &b[k],
            tol,
        ));
        for (x, y) in c[k].iter().zip(&b[k]) {
            restart_worst = restart_worst.max((x - y).abs() / (2e-5 + 1e-4 * y.abs()));
        }
    }
    eprintln!(
        "resumed in Burn: {worst:.3} of the bound from Burn's own run; restarted without \
         the state: {restart_worst:.0} bounds"
    );
    assert!(
        restart_worst > 10.0,
        "without the state Burn lands {restart_worst} bounds away: the record matters"
    );

    // Several parameter groups are refused: Burn's record has one set of hyperparameters.
    let no_decay = AdamConfig {
        weight_decay: 0.0,
        ..cfg.clone()
    };
    let mut grouped = BurnOptimizer::with_groups(vec![
        ParamGroup::matching(|path| path.ends_with(".bias"), no_decay),
        ParamGroup::rest(cfg.clone()),
    ]);
    let model = mlp(&start, &device);
    let (x, y) = batch(seed, 0, &device);
    let loss = mse(&model, x, y);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let _ = grouped.step(1e-2, model, grads).unwrap();
    let e = grouped.save_burn_record(dir.join("grouped")).unwrap_err();
    assert!(matches!(e, Error::InvalidOptions(_)), "{e}");
    assert!(!dir.join("grouped.bpk").exists(), "nothing written");
    eprintln!("{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_burn_adamw_run_goes_on_here_from_its_record() {
    let (device, gpu) = setup();
    let mut rng = common::rng("from_burn_record");
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut rng);
    let cfg = adamw_config();
    let (first, then) = (8, 8);
    let dir = std::env::temp_dir().join(format!("wgpu-optim-from-burn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // `first` steps of Burn's AdamW, its record saved by Burn itself.
    let mut theirs = burn_adamw();
    let model = burn_train(seed, 0, first, mlp(&start, &device), &mut theirs, &device);
    theirs.save(dir.join("burn")).unwrap();
    let file = dir.join("burn.bpk");

    // Our optimizer takes the moments over bit for bit, with the step count.
    let mut optim = BurnOptimizer::new(cfg.clone());
    optim.load_burn_record(&file, &model).unwrap();
    assert_eq!(optim.step_count(), first as u64);
    let reader = burn_pack::Reader::from_file(&file).unwrap();
    let opt = optim.optimizer().unwrap();
    let moments = record_moments(reader, &model);
    assert_eq!(moments.len(), 8);
    for m in &moments {
        let ours = opt.state(m.key, PATHS[m.k]).unwrap();
        compare(&m.name, &ours, &m.values, Bound::Bits);
    }

    // And goes on as Burn's own run does, within the two's rounding difference; each of our
    // steps is the reference's from Burn's state, bit for bit on lavapipe.
    let mut p = to_arrays(values(&model));
    let mut states: Vec<State> = p.iter().map(|t| State::new(&cfg, t.len())).collect();
    for (k, s) in states.iter_mut().enumerate() {
        s.step = first as u64;
        for key in ["exp_avg", "exp_avg_sq"] {
            *s.get_mut(key).unwrap() = Array1::from(opt.state(key, PATHS[k]).unwrap());
        }
    }
    let mut ours = model;
    for s in first..first + then {
        let (x, y) = batch(seed, s, &device);
        let loss = mse(&ours, x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &ours);
        let g = read_grads(&ours, &grads);
        ours = optim.step(1e-2, ours, grads).unwrap();
        reference_step(reference::adam, &cfg, &mut p, &g, &mut states, 1.0);
        for (k, got) in values(&ours).iter().enumerate() {
            compare(
                &format!("step {s} {}", PATHS[k]),
                got,
                p[k].as_slice().unwrap(),
                bound(&gpu),
            );
        }
    }
    let uninterrupted = burn_uninterrupted(seed, first + then, &start, &device);
    let tol = BURN_ADAMW_TOL;
    let (a, b) = (values(&ours), values(&uninterrupted));
    let mut worst = 0.0f32;
    for k in 0..4 {
        worst = worst.max(compare(
            &format!("{} taken over from Burn", PATHS[k]),
            &a[k],
            &b[k],
            tol,
        ));
    }
    eprintln!("taken over from Burn's record: {worst:.3} of the bound from Burn's own run");

    // Bad records: typed errors, nothing changed.
    let before = optim
        .optimizer()
        .unwrap()
        .state("exp_avg", PATHS[0])
        .unwrap();
    let model = mlp(&start, &device);
    let e = optim
        .load_burn_record(dir.join("missing.bpk"), &model)
        .unwrap_err();
    assert!(matches!(e, Error::BurnRecord(_)), "{e}");
    eprintln!("{e}");
    // A record of other parameters (another model's ids).
    let e = optim.load_burn_record(&file, &model).unwrap_err();
    assert!(
        matches!(&e, Error::BurnRecord(m) if m.contains("no step count")),
        "{e}"
    );
    eprintln!("{e}");
    // amsgrad needs max_moment_2, which Burn's AdamW without amsgrad does not keep.
    let mut one = burn_adamw();
    let trained = burn_train(seed, 0, 1, mlp(&start, &device), &mut one, &device);
    one.save(dir.join("one")).unwrap();
    let mut ams = BurnOptimizer::new(AdamConfig {
        amsgrad: true,
        ..cfg.clone()
    });
    let e = ams
        .load_burn_record(dir.join("one.bpk"), &trained)
        .unwrap_err();
    assert!(
        matches!(&e, Error::BurnRecord(m) if m.contains("max_moment_2")),
        "{e}"
    );
    assert!(ams.optimizer().is_none(), "nothing was laid out");
    // Step counts that differ between parameters.
    let mut uneven = burn_adamw();
    let bias_id = trained.fc1.bias.as_ref().unwrap().id;
    let mut m = trained;
    for s in 0..2 {
        let (x, y) = batch(seed, s, &device);
        let loss = mse(&m, x, y);
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        if s == 1 {
            grads.remove::<1>(bias_id);
        }
        m = uneven.step(1e-2, m, grads);
    }
    uneven.save(dir.join("uneven")).unwrap();
    let e = optim
        .load_burn_record(dir.join("uneven.bpk"), &m)
        .unwrap_err();
    assert!(
        matches!(&e, Error::BurnRecord(m) if m.contains("step count for all")),
        "{e}"
    );
    eprintln!("{e}");
    assert_eq!(
        optim
            .optimizer()
            .unwrap()
            .state("exp_avg", PATHS[0])
            .unwrap(),
        before,
        "the state is as it was"
    );
    assert_eq!(optim.step_count(), (first + then) as u64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tensors of a Burn optimizer record: `(parameter id, leaf under it, shape, values)`.
fn record_tensors(reader: burn_pack::Reader) -> Vec<(String, String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for t in reader.into_tensors().unwrap() {
        let (name, dtype, shape, _, bytes) = t.into_parts().unwrap();
        assert_eq!(dtype, burn_pack::DType::F32, "{name}");
        let (id, leaf) = name.split_once('.').unwrap();
        let values = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        out.push((id.to_string(), leaf.to_string(), shape.to_vec(), values));
    }
    out
}

/// Every state tensor `C` keeps for `model` is in the record, in the shape
/// [`BurnRecord::burn_state`] gives it, as `optim` holds it, bit for bit; the record's other
/// tensors are `derived` ones, in the parameter's shape. Returns how many were compared.
fn state_matches_record<C: BurnRecord>(
    label: &str,
    optim: &BurnOptimizer<C>,
    model: &Mlp,
    reader: burn_pack::Reader,
    derived: &[&str],
) -> usize {
    let opt = optim.optimizer().unwrap();
    let ids = ids(model).map(|id| id.val().to_string());
    let mut compared = 0;
    for (id, leaf, shape, values) in record_tensors(reader) {
        let k = ids.iter().position(|i| *i == id).expect("a parameter's id");
        let kept = opt.config().burn_state(&shapes()[k]);
        match kept.iter().find(|(l, _, _)| *l == leaf) {
            Some((_, key, want)) => {
                assert_eq!(&shape, want, "{label} {id}.{leaf}");
                let ours = opt.state(key, PATHS[k]).unwrap();
                compare(
                    &format!("{label} {}.{leaf}", PATHS[k]),
                    &values,
                    &ours,
                    Bits,
                );
                compared += 1;
            }
            None => {
                assert_eq!(shape, shapes()[k], "{label} {id}.{leaf}");
                assert!(
                    derived.contains(&leaf.as_str()),
                    "{label}: unexpected {leaf}"
                )
            }
        }
    }
    compared
}

/// One optimizer both crates have, configured alike, through Burn's record both ways:
/// - Burn's run for 6 steps, its record (written by Burn) taken over here bit for bit, and
///   6 more steps here land within `tol` of Burn's uninterrupted 12 steps; the same 6 steps
///   without the state land more than 10 times `tol` away (the state matters);
/// - our state then written as a record, read by Burn bit for bit, and 6 more steps of
///   Burn's from it land within `tol` of 6 more of ours.
///
/// `kept` is how many state tensors the model's four parameters have together, `derived` the
/// leaves Burn's record holds besides (computed from the state).
fn record_both_ways<C: BurnRecord + Clone>(
    label: &str,
    cfg: C,
    burn: fn() -> burn::optim::ModuleOptimizer,
    kept: usize,
    derived: &[&str],
    tol: Bound,
) {
    let (device, _gpu) = setup();
    let mut rng = common::rng(label);
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut rng);
    let (lr, first, then) = (1e-2, 6, 6);
    let dir = std::env::temp_dir().join(format!("wgpu-optim-burn-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Bound::Within { atol, rtol } = tol else {
        panic!("a tolerance")
    };

    let mut theirs = burn();
    let model = burn_train(seed, 0, first, mlp(&start, &device), &mut theirs, &device);
    theirs.save(dir.join("burn")).unwrap();
    let file = dir.join("burn.bpk");
    let mut optim = BurnOptimizer::new(cfg.clone());
    optim.load_burn_record(&file, &model).unwrap();
    let reader = burn_pack::Reader::from_file(&file).unwrap();
    let compared = state_matches_record(label, &optim, &model, reader, derived);
    assert_eq!(compared, kept, "{label}: state tensors taken over");
    let expected_steps = if C::BURN_TIME.is_some() { first } else { 1 };
    assert_eq!(optim.step_count(), expected_steps as u64, "{label}");

    let ours = train_at(lr, seed, first, then, model.clone(), &mut optim, &device);
    let whole = burn_train(
        seed,
        0,
        first + then,
        mlp(&start, &device),
        &mut burn(),
        &device,
    );
    let mut fresh = BurnOptimizer::new(cfg.clone());
    let restarted = train_at(lr, seed, first, then, model, &mut fresh, &device);
    let (a, b, c) = (values(&ours), values(&whole), values(&restarted));
    let (mut worst, mut restart_worst) = (0.0f32, 0.0f32);
    for k in 0..4 {
        let what = format!("{label} {} taken over from Burn", PATHS[k]);
        worst = worst.max(compare(&what, &a[k], &b[k], tol));
        for (x, y) in c[k].iter().zip(&b[k]) {
            restart_worst = restart_worst.max((x - y).abs() / (atol + rtol * y.abs()));
        }
    }
    assert!(
        restart_worst > 10.0,
        "{label}: without the state the run lands {restart_worst} bounds away: the record matters"
    );

    optim.save_burn_record(dir.join("ours")).unwrap();
    let mut loaded = burn().load(dir.join("ours.bpk")).unwrap();
    let reader = burn_pack::Reader::from_bytes(loaded.to_record().into_bytes().unwrap()).unwrap();
    let compared = state_matches_record(label, &optim, &ours, reader, derived);
    assert_eq!(compared, kept, "{label}: state tensors Burn read");
    let from = first + then;
    let theirs_on = burn_train(seed, from, then, ours.clone(), &mut loaded, &device);
    let ours_on = train_at(lr, seed, from, then, ours, &mut optim, &device);
    let (a, b) = (values(&theirs_on), values(&ours_on));
    let mut back = 0.0f32;
    for k in 0..4 {
        let what = format!("{label} {} gone on in Burn", PATHS[k]);
        back = back.max(compare(&what, &a[k], &b[k], tol));
    }
    eprintln!(
        "{label}: taken over from Burn {worst:.3} of the bound from Burn's own run \
         (without the state {restart_worst:.0}); gone on in Burn from ours {back:.3}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sgd_momentum_state_goes_both_ways_through_burns_record() {
    let cfg = SgdConfig {
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 1e-2,
        ..Default::default()
    };
    let burn = || {
        BurnSgdConfig::new()
            .with_momentum(Some(MomentumConfig {
                momentum: 0.9,
                dampening: 0.1,
                nesterov: false,
            }))
            .with_weight_decay(Some(WeightDecayConfig { penalty: 1e-2 }))
            .init()
    };
    record_both_ways("sgd", cfg, burn, 4, &[], BURN_ADAMW_TOL);
}

#[test]
fn rmsprop_state_goes_both_ways_through_burns_record() {
    let cfg = RmsPropConfig {
        alpha: 0.99,
        eps: 1e-5,
        momentum: 0.9,
        centered: true,
        ..Default::default()
    };
    let burn = || {
        BurnRmsPropConfig::new()
            .with_alpha(0.99)
            .with_epsilon(1e-5)
            .with_momentum(0.9)
            .with_centered(true)
            .init()
    };
    record_both_ways(
        "rmsprop",
        cfg.clone(),
        burn,
        12,
        &["centered.avg"],
        BURN_ADAMW_TOL,
    );

    // Burn's plain RMSprop keeps no `grad_avg`: a centered one here refuses its record and
    // lays out nothing; a plain one takes it.
    let (device, _gpu) = setup();
    let mut rng = common::rng("rmsprop_plain");
    let seed = rand::Rng::random::<u64>(&mut rng);
    let start = init_values(&mut rng);
    let mut plain = BurnRmsPropConfig::new()
        .with_epsilon(1e-5)
        .with_momentum(0.9)
        .init();
    let model = burn_train(seed, 0, 2, mlp(&start, &device), &mut plain, &device);
    let dir = std::env::temp_dir().join(format!("wgpu-optim-burn-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    plain.save(dir.join("plain")).unwrap();
    let mut centered = BurnOptimizer::new(cfg.clone());
    let e = centered
        .load_burn_record(dir.join("plain.bpk"), &model)
        .unwrap_err();
    assert!(
        matches!(&e, Error::BurnRecord(m) if m.contains("centered.grad_avg")),
        "{e}"
    );
    assert!(centered.optimizer().is_none(), "nothing was laid out");
    eprintln!("{e}");
    let mut ours = BurnOptimizer::new(RmsPropConfig {
        centered: false,
        ..cfg
    });
    ours.load_burn_record(dir.join("plain.bpk"), &model)
        .unwrap();
    assert_eq!(ours.step_count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn adagrad_state_goes_both_ways_through_burns_record() {
    let cfg = AdagradConfig {
        lr_decay: 1e-2,
        eps: 1e-5,
        ..Default::default()
    };
    let burn = || {
        AdaGradConfig::new()
            .with_lr_decay(1e-2)
            .with_epsilon(1e-5)
            .init()
    };
    record_both_ways("adagrad", cfg, burn, 4, &[], BURN_ADAMW_TOL);
}

#[test]
fn lion_state_goes_both_ways_through_burns_record() {
    let cfg = LionConfig {
        betas: (0.9, 0.99),
        weight_decay: 1e-2,
        ..Default::default()
    };
    let burn = || {
        BurnLionConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.99)
            .with_weight_decay(1e-2)
            .init()
    };
    record_both_ways("lion", cfg, burn, 4, &[], BURN_ADAMW_TOL);
}

#[test]
fn lamb_state_goes_both_ways_through_burns_record() {
    let cfg = LambConfig {
        betas: (0.9, 0.999),
        eps: 1e-6,
        weight_decay: 1e-2,
        ..Default::default()
    };
    let burn = || {
        BurnLambConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.999)
            .with_epsilon(1e-6)
            .with_weight_decay(1e-2)
            .init()
    };
    record_both_ways("lamb", cfg, burn, 8, &[], BURN_ADAMW_TOL);
}

#[test]
fn adafactor_state_goes_both_ways_through_burns_record() {
    // Burn adds epsilon_1 to g^2 before its means, torch (and so we) floors the estimate
    // with eps1 after: at 1e-30 on both sides neither changes an f32 of these gradients.
    let cfg = AdafactorConfig {
        eps: (Some(1e-30), 1e-3),
        weight_decay: 1e-2,
        ..Default::default()
    };
    let burn = || {
        BurnAdafactorConfig::new()
            .with_epsilon_1(1e-30)
            .with_weight_decay(1e-2)
            .init()
    };
    // The two weights keep a row and a column factor each, the two biases a full one.
    record_both_ways("adafactor", cfg, burn, 6, &[], BURN_ADAMW_TOL);
}
