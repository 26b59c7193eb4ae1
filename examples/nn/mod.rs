//! A small dense network whose forward and backward passes are WGSL kernels that read the
//! weights from, and write the gradients into, a `wgpu_optim::Params` arena. Shared by the
//! training examples (`#[path = "nn/mod.rs"] mod nn;`). Data stays on the GPU; the only
//! read-backs are the loss/accuracy totals, when the caller asks for them.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use wgpu_optim::{DType, Gpu, Params};

const SHADER: &str = include_str!("nn.wgsl");

/// The loss at the output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy over classes (targets are class indices).
    SoftmaxXent,
    /// Squared error of a single output (targets are values).
    Mse,
}

struct Pipes {
    forward: wgpu::ComputePipeline,
    backward_weights: wgpu::ComputePipeline,
    backward_input: wgpu::ComputePipeline,
    loss: wgpu::ComputePipeline,
    accumulate: wgpu::ComputePipeline,
}

/// One recorded pass: (pipeline, bind group, threads) in order.
struct Pass {
    ops: Vec<(usize, wgpu::BindGroup, u32)>,
    /// Dims uniforms whose `offset` moves with the batch.
    indexed_dims: Vec<wgpu::Buffer>,
    /// Dims of the accumulate kernel (its `_p0` is the loss-log slot).
    acc_dims: wgpu::Buffer,
    acc: wgpu::Buffer,
    batch: usize,
    _keep: Vec<wgpu::Buffer>,
}

/// A multilayer perceptron: `sizes = [inputs, hidden.., outputs]`, ReLU between layers.
pub struct Mlp {
    gpu: Gpu,
    /// The weights (`fc{l}.weight`, `[out x in]`) and biases (`fc{l}.bias`) with their gradients.
    pub params: Params,
    pipes: Pipes,
    train: Pass,
    eval: Pass,
    idx: wgpu::Buffer,
    order: Vec<u32>,
    n_train: usize,
    log: wgpu::Buffer,
}

/// Capacity of the per-step loss log.
pub const LOG_STEPS: usize = 1 << 16;

fn storage(gpu: &Gpu, data: &[u8], label: &str) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (data.len() as u64).max(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    gpu.queue().write_buffer(&buf, 0, data);
    buf
}

fn zeros(gpu: &Gpu, floats: usize, label: &str) -> wgpu::Buffer {
    storage(gpu, &vec![0u8; floats * 4], label)
}

fn dims(gpu: &Gpu, batch: usize, inp: usize, out: usize, flags: u32) -> wgpu::Buffer {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("nn dims"),
        size: 32,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let d: [u32; 8] = [batch as u32, inp as u32, out as u32, flags, 0, 0, 0, 0];
    gpu.queue().write_buffer(&buf, 0, bytemuck::cast_slice(&d));
    buf
}

impl Mlp {
    /// The digits classifier the examples train: 64 pixels in, 64 hidden units, 10 classes,
    /// softmax cross-entropy, batches of 32, parameters in `dtype`. Weights and batch order
    /// come from `seed`: the same seed gives every optimizer of a comparison the same start
    /// and the same batches.
    pub fn digits(
        gpu: &Gpu,
        train: &Split,
        test: &Split,
        seed: u64,
        dtype: DType,
    ) -> Result<Mlp, wgpu_optim::Error> {
        Self::with_dtype(
            gpu,
            &[64, 64, 10],
            Loss::SoftmaxXent,
            (&train.0, &train.1),
            (&test.0, &test.1),
            32,
            &mut rand::SeedableRng::seed_from_u64(seed),
            dtype,
        )
    }

    /// Build the network with He-initialised f32 weights and upload both data sets.
    ///
    /// `train`/`test` are `(rows, targets)`: rows `[n x inputs]` row-major, one target per row
    /// (a class index as f32 for [`Loss::SoftmaxXent`], a value for [`Loss::Mse`]).
    pub fn new(
        gpu: &Gpu,
        sizes: &[usize],
        loss: Loss,
        train: (&[f32], &[f32]),
        test: (&[f32], &[f32]),
        batch: usize,
        rng: &mut StdRng,
    ) -> Result<Mlp, wgpu_optim::Error> {
        Self::with_dtype(gpu, sizes, loss, train, test, batch, rng, DType::F32)
    }

    /// [`Mlp::new`] with weights, biases and their gradients stored as `dtype` (f32 or bf16;
    /// the kernels compute in f32).
    #[allow(clippy::too_many_arguments)]
    pub fn with_dtype(
        gpu: &Gpu,
        sizes: &[usize],
        loss: Loss,
        train: (&[f32], &[f32]),
        test: (&[f32], &[f32]),
        batch: usize,
        rng: &mut StdRng,
        dtype: DType,
    ) -> Result<Mlp, wgpu_optim::Error> {
        assert!(dtype != DType::F16, "the example kernels read f32 or bf16");
        let layers = sizes.len() - 1;
        let mut builder = Params::builder(gpu);
        for l in 0..layers {
            let (i, o) = (sizes[l], sizes[l + 1]);
            let std = (2.0 / i as f32).sqrt();
            let w: Vec<f32> = (0..i * o)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 3f32.sqrt())
                .collect();
            builder = builder
                .tensor_with_data(&format!("fc{l}.weight"), &[o, i], dtype, &w)
                .tensor_with_data(&format!("fc{l}.bias"), &[o], dtype, &vec![0.0; o]);
        }
        let params = builder.build()?;
        let half = dtype == DType::Bf16;
        let module = gpu
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("nn"),
                source: wgpu::ShaderSource::Wgsl(SHADER.into()),
            });
        let pipe = |entry: &str| {
            gpu.device()
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &[("BF16", half as u32 as f64)],
                        ..Default::default()
                    },
                    cache: None,
                })
        };
        let pipes = Pipes {
            forward: pipe("forward"),
            backward_weights: pipe("backward_weights"),
            backward_input: pipe("backward_input"),
            loss: pipe(if loss == Loss::Mse {
                "mse"
            } else {
                "softmax_xent"
            }),
            accumulate: pipe("accumulate"),
        };
        let n_train = train.1.len();
        let idx = storage(
            gpu,
            bytemuck::cast_slice(&(0..n_train as u32).collect::<Vec<_>>()),
            "nn idx",
        );
        let x_train = storage(gpu, bytemuck::cast_slice(train.0), "nn x train");
        let t_train = storage(gpu, bytemuck::cast_slice(train.1), "nn t train");
        let x_test = storage(gpu, bytemuck::cast_slice(test.0), "nn x test");
        let t_test = storage(gpu, bytemuck::cast_slice(test.1), "nn t test");
        let log = zeros(gpu, LOG_STEPS, "nn loss log");
        let train_pass = Self::pass(
            gpu, &pipes, &params, sizes, batch, x_train, t_train, &idx, &log, true,
        );
        let eval_pass = Self::pass(
            gpu,
            &pipes,
            &params,
            sizes,
            test.1.len(),
            x_test,
            t_test,
            &idx,
            &log,
            false,
        );
        Ok(Mlp {
            gpu: gpu.clone(),
            params,
            pipes,
            train: train_pass,
            eval: eval_pass,
            idx,
            order: (0..n_train as u32).collect(),
            n_train,
            log,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn pass(
        gpu: &Gpu,
        pipes: &Pipes,
        params: &Params,
        sizes: &[usize],
        batch: usize,
        x: wgpu::Buffer,
        target: wgpu::Buffer,
        idx: &wgpu::Buffer,
        log: &wgpu::Buffer,
        training: bool,
    ) -> Pass {
        let layers = sizes.len() - 1;
        let indexed = if training { 2 } else { 0 };
        let mut keep = vec![];
        let mut indexed_dims = vec![];
        let acts: Vec<wgpu::Buffer> = (1..=layers)
            .map(|l| zeros(gpu, batch * sizes[l], "nn act"))
            .collect();
        let dacts: Vec<wgpu::Buffer> = (1..=layers)
            .map(|l| zeros(gpu, batch * sizes[l], "nn dact"))
            .collect();
        let losses = zeros(gpu, 2 * batch, "nn losses");
        let acc = zeros(gpu, 4, "nn acc");
        let act = |l: usize| if l == 0 { &x } else { &acts[l - 1] };
        let pl = |p: &wgpu::ComputePipeline| -> usize {
            [
                &pipes.forward,
                &pipes.backward_weights,
                &pipes.backward_input,
                &pipes.loss,
                &pipes.accumulate,
            ]
            .iter()
            .position(|q| *q == p)
            .unwrap()
        };
        let mut ops = vec![];
        let mut op = |p: &wgpu::ComputePipeline,
                      dims: wgpu::Buffer,
                      entries: Vec<(u32, wgpu::BindingResource)>,
                      threads: usize,
                      keep: &mut Vec<wgpu::Buffer>| {
            let mut all = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: dims.as_entire_binding(),
            }];
            all.extend(
                entries
                    .into_iter()
                    .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
            );
            let bg = gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &p.get_bind_group_layout(0),
                entries: &all,
            });
            ops.push((pl(p), bg, threads as u32));
            keep.push(dims);
        };
        let name = |l: usize, what: &str| format!("fc{l}.{what}");
        fn bind(b: wgpu::BufferBinding<'_>) -> wgpu::BindingResource<'_> {
            wgpu::BindingResource::Buffer(b)
        }
        for l in 0..layers {
            let flags = (l + 1 < layers) as u32 | if l == 0 { indexed } else { 0 };
            let d = dims(gpu, batch, sizes[l], sizes[l + 1], flags);
            if l == 0 && training {
                indexed_dims.push(d.clone());
            }
            let w = params.binding(&name(l, "weight")).unwrap();
            let b = params.binding(&name(l, "bias")).unwrap();
            op(
                &pipes.forward,
                d,
                vec![
                    (1, act(l).as_entire_binding()),
                    (2, bind(w)),
                    (3, bind(b)),
                    (4, acts[l].as_entire_binding()),
                    (5, idx.as_entire_binding()),
                ],
                batch * sizes[l + 1],
                &mut keep,
            );
        }
        let d = dims(gpu, batch, 0, sizes[layers], indexed);
        if training {
            indexed_dims.push(d.clone());
        }
        op(
            &pipes.loss,
            d,
            vec![
                (5, idx.as_entire_binding()),
                (10, acts[layers - 1].as_entire_binding()),
                (11, target.as_entire_binding()),
                (12, dacts[layers - 1].as_entire_binding()),
                (14, losses.as_entire_binding()),
            ],
            batch,
            &mut keep,
        );
        let acc_dims = dims(gpu, batch, 0, 0, 0);
        op(
            &pipes.accumulate,
            acc_dims.clone(),
            vec![
                (13, acc.as_entire_binding()),
                (14, losses.as_entire_binding()),
                (15, log.as_entire_binding()),
            ],
            1,
            &mut keep,
        );
        if training {
            for l in (0..layers).rev() {
                let d = dims(
                    gpu,
                    batch,
                    sizes[l],
                    sizes[l + 1],
                    if l == 0 { indexed } else { 0 },
                );
                if l == 0 {
                    indexed_dims.push(d.clone());
                }
                let gw = params.grad_binding(&name(l, "weight")).unwrap();
                let gb = params.grad_binding(&name(l, "bias")).unwrap();
                op(
                    &pipes.backward_weights,
                    d,
                    vec![
                        (1, act(l).as_entire_binding()),
                        (5, idx.as_entire_binding()),
                        (6, dacts[l].as_entire_binding()),
                        (7, bind(gw)),
                        (8, bind(gb)),
                    ],
                    // One thread per element, per word of two with bf16.
                    if params.dtype(&name(l, "weight")).unwrap() == DType::Bf16 {
                        (sizes[l] * sizes[l + 1]).div_ceil(2) + sizes[l + 1].div_ceil(2)
                    } else {
                        sizes[l] * sizes[l + 1] + sizes[l + 1]
                    },
                    &mut keep,
                );
                if l > 0 {
                    let d = dims(gpu, batch, sizes[l], sizes[l + 1], 1);
                    let w = params.binding(&name(l, "weight")).unwrap();
                    op(
                        &pipes.backward_input,
                        d,
                        vec![
                            (1, acts[l - 1].as_entire_binding()),
                            (2, bind(w)),
                            (6, dacts[l].as_entire_binding()),
                            (9, dacts[l - 1].as_entire_binding()),
                        ],
                        batch * sizes[l],
                        &mut keep,
                    );
                }
            }
        }
        keep.extend(acts);
        keep.extend(dacts);
        keep.extend([losses, x, target]);
        Pass {
            ops,
            indexed_dims,
            acc_dims,
            acc,
            batch,
            _keep: keep,
        }
    }

    /// Full batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.n_train / self.train.batch
    }

    /// New random sample order (uploaded once per epoch: 4 bytes per sample).
    pub fn shuffle(&mut self, rng: &mut StdRng) {
        self.order.shuffle(rng);
        self.gpu
            .queue()
            .write_buffer(&self.idx, 0, bytemuck::cast_slice(&self.order));
    }

    /// Data parallelism: a new random order of the whole training set (the same on every rank
    /// when their `rng`s are), of which this network, built with batch `global_batch / ranks`,
    /// takes part `rank` of every global batch: batch `k` here is samples
    /// `k * global_batch + rank * batch ..` of that order.
    pub fn shuffle_shard(&mut self, rng: &mut StdRng, rank: usize, ranks: usize) {
        let mut global: Vec<u32> = (0..self.n_train as u32).collect();
        global.shuffle(rng);
        let b = self.train.batch;
        let gb = b * ranks;
        self.order = (0..self.n_train / gb)
            .flat_map(|k| global[k * gb + rank * b..k * gb + (rank + 1) * b].to_vec())
            .collect();
        self.order.resize(self.n_train, 0);
        self.gpu
            .queue()
            .write_buffer(&self.idx, 0, bytemuck::cast_slice(&self.order));
    }

    fn run(&self, pass: &Pass) {
        let pipes = [
            &self.pipes.forward,
            &self.pipes.backward_weights,
            &self.pipes.backward_input,
            &self.pipes.loss,
            &self.pipes.accumulate,
        ];
        let mut enc = self
            .gpu
            .device()
            .create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            for (p, bg, threads) in &pass.ops {
                cp.set_pipeline(pipes[*p]);
                cp.set_bind_group(0, bg, &[]);
                let groups = if *p == 4 { 1 } else { threads.div_ceil(64) };
                cp.dispatch_workgroups(groups, 1, 1);
            }
        }
        self.gpu.queue().submit([enc.finish()]);
    }

    /// Forward + loss + backward of batch `k` of the current epoch order: the gradients land in
    /// `params`' grad buffers, the loss is added to the running totals on the GPU.
    pub fn forward_backward(&mut self, k: usize) {
        let offset = (k * self.train.batch) as u32;
        for d in &self.train.indexed_dims {
            self.gpu.queue().write_buffer(d, 16, &offset.to_le_bytes());
        }
        self.run(&self.train);
    }

    fn take(&self, acc: &wgpu::Buffer) -> (f32, f32) {
        let v = self.gpu.read_buffer_f32(acc, 3).unwrap();
        self.gpu.queue().write_buffer(acc, 0, &[0u8; 12]);
        (v[0] / v[2].max(1.0), v[1] / v[2].max(1.0))
    }

    async fn take_async(&self, acc: &wgpu::Buffer) -> Result<(f32, f32), wgpu_optim::Error> {
        let v = self.gpu.read_buffer_f32_async(acc, 3).await?;
        self.gpu.queue().write_buffer(acc, 0, &[0u8; 12]);
        Ok((v[0] / v[2].max(1.0), v[1] / v[2].max(1.0)))
    }

    /// Keep the mean loss of the next training batches in the loss log, from `slot` on
    /// (`None`: stop logging).
    pub fn log_losses_at(&self, slot: Option<usize>) {
        let (flags, s) = match slot {
            Some(s) => (4u32, s.min(LOG_STEPS - 1) as u32),
            None => (0, 0),
        };
        self.gpu.queue().write_buffer(
            &self.train.acc_dims,
            12,
            bytemuck::cast_slice(&[flags, 0, s]),
        );
    }

    /// The first `n` entries of the loss log (one read-back).
    pub fn read_loss_log(&self, n: usize) -> Vec<f32> {
        self.gpu
            .read_buffer_f32(&self.log, n.min(LOG_STEPS))
            .unwrap()
    }

    /// Mean loss and accuracy since the last call (a read-back: call it only when printing).
    pub fn take_train_stats(&mut self) -> (f32, f32) {
        self.take(&self.train.acc)
    }

    /// Async form of [`Mlp::take_train_stats`] (what a web page calls: nothing may block there).
    pub async fn take_train_stats_async(&self) -> Result<(f32, f32), wgpu_optim::Error> {
        self.take_async(&self.train.acc).await
    }

    /// Mean loss and accuracy on the test set (one forward pass over all of it).
    pub fn evaluate(&mut self) -> (f32, f32) {
        self.run(&self.eval);
        self.take(&self.eval.acc)
    }

    /// Async form of [`Mlp::evaluate`].
    pub async fn evaluate_async(&self) -> Result<(f32, f32), wgpu_optim::Error> {
        self.run(&self.eval);
        self.take_async(&self.eval.acc).await
    }
}

/// Standardise columns of `x` (`[n x f]`) with the mean/std of the rows in `fit`.
pub fn standardize(x: &mut [f32], f: usize, fit: std::ops::Range<usize>) {
    for j in 0..f {
        let col: Vec<f64> = fit.clone().map(|i| x[i * f + j] as f64).collect();
        let mean = col.iter().sum::<f64>() / col.len() as f64;
        let std = (col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / col.len() as f64)
            .sqrt()
            .max(1e-12);
        for i in 0..x.len() / f {
            x[i * f + j] = ((x[i * f + j] as f64 - mean) / std) as f32;
        }
    }
}

/// Rows and targets of a data set: `(rows [n x features], one target per row)`.
pub type Split = (Vec<f32>, Vec<f32>);

/// The digits shuffled with `rng` and split into (train, test), 20% held out for testing.
pub fn digits_split(rng: &mut StdRng) -> (Split, Split) {
    let (x, y) = digits();
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.shuffle(rng);
    let pick = |ids: &[usize]| -> Split {
        (
            ids.iter()
                .flat_map(|&i| x[i * 64..(i + 1) * 64].to_vec())
                .collect(),
            ids.iter().map(|&i| y[i]).collect(),
        )
    };
    let n_test = y.len() / 5;
    (pick(&order[n_test..]), pick(&order[..n_test]))
}

/// The UCI 8x8 handwritten digits (1797 images), pixels scaled to [0, 1]: (rows, labels).
pub fn digits() -> (Vec<f32>, Vec<f32>) {
    use std::io::Read;
    let gz = include_bytes!("../data/digits.csv.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("digits.csv.gz");
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        let v: Vec<f32> = line
            .split(',')
            .map(|s| s.trim().parse().expect("number"))
            .collect();
        x.extend(v[..64].iter().map(|p| p / 16.0));
        y.push(v[64]);
    }
    (x, y)
}
