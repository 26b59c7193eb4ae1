//! # wgpu-optim
//!
//! Fused GPU optimizer steps (Adam/AdamW, SGD with momentum/Nesterov, RMSprop, Adagrad,
//! Adadelta, Rprop, ASGD, Lion, LAMB, Adafactor, Adamax, RAdam, NAdam, Schedule-Free AdamW) written as WGSL
//! compute shaders and dispatched through wgpu (Vulkan, Metal, DX12, WebGPU), with
//! torch.optim's semantics.
//!
//! Parameters and gradients live in a flat GPU arena ([`Params`]); an optimizer keeps its state
//! in the same layout and updates every tensor with one fused kernel per arena chunk, in one
//! queue submit, with no host read-back.
//!
//! Tensors have a shape and a storage [`DType`] (f32, bf16 or f16, mixed in one arena;
//! [`Params::builder`]); the update math is f32 whatever the storage, and [`Precision`] picks
//! the optimizer state's dtype, f32 master weights and stochastic rounding. [`init`] has
//! torch.nn.init's initialisers, run on the GPU.
//!
//! Learning-rate schedules ([`schedule`]: StepLR, CosineAnnealingLR, OneCycleLR, CyclicLR,
//! LambdaLR, ReduceLROnPlateau, SequentialLR, ChainedScheduler, ...) follow
//! `torch.optim.lr_scheduler` to the last bit of their f64 arithmetic, and save and load their
//! state for exact resumption; [`LrFinder`] runs the learning-rate range test.
//! [`checkpoint`] saves and resumes parameters and optimizer state exactly, as a `.safetensors`
//! file with PyTorch's state names (`tools/torch_checkpoint.py` converts to and from
//! `torch.optim` state dicts).
//!
//! ```no_run
//! use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
//!
//! let gpu = Gpu::new()?;
//! let w0 = vec![0.5f32; 1000];
//! let mut params = Params::new(&gpu, &[("w", &w0[..])])?;
//! let mut opt = Adam::new(&params, AdamConfig { lr: 1e-3, ..Default::default() })?;
//! for _ in 0..10 {
//!     params.write_grad("w", &vec![0.1; 1000])?;
//!     opt.step(&mut params)?;
//! }
//! let w = params.read("w")?;
//! let m = opt.state("exp_avg", "w")?;
//! # Ok::<(), wgpu_optim::Error>(())
//! ```
//!
//! # In the browser
//!
//! The crate builds for `wasm32-unknown-unknown` (WebGPU through `navigator.gpu`). Nothing may
//! block there, so every call that reads the GPU has an async form on every target
//! ([`Gpu::new_async`], [`Params::read_async`], [`Optimizer::state_async`],
//! [`Optimizer::last_grad_norm_async`], [`checkpoint::save_to_bytes_async`], ...); natively the
//! blocking calls run those futures to completion, in a browser they return
//! [`Error::WouldBlock`]. [`Optimizer::step`] never waits and is the same everywhere.
//! `examples/web/` trains a model in a page.
//!
//! ```no_run
//! # async fn f() -> wgpu_optim::Result<()> {
//! use wgpu_optim::{Adam, AdamConfig, Gpu, Optimizer, Params};
//! let gpu = Gpu::new_async().await?;
//! let mut params = Params::new(&gpu, &[("w", &[0.5f32; 1000][..])])?;
//! let mut opt = Adam::new(&params, AdamConfig::default())?;
//! params.write_grad("w", &[0.1; 1000])?;
//! opt.step(&mut params)?;
//! let w = params.read_async("w").await?;
//! let m = opt.state_async("exp_avg", "w").await?;
//! # Ok(()) }
//! ```
//!
//! # Threads
//!
//! [`Gpu`], [`Params`], every optimizer ([`FusedOptimizer`]), [`GradScaler`] and the schedulers
//! are `Send + Sync`: build them on one thread, step them on another, or step two optimizers
//! on one device from two threads (each call records and submits its own commands; wgpu
//! orders the submits). Calls that change something take `&mut self`, so one object is used
//! by one thread at a time.
#![warn(missing_docs)]

mod arena;
#[cfg(feature = "bench")]
pub mod bench;
pub mod blockwise;
#[cfg(feature = "burn")]
pub mod burn;
pub mod checkpoint;
#[cfg(feature = "mpi")]
pub mod distributed;
pub mod dtype;
mod error;
mod gpu;
pub mod init;
mod kernel;
pub mod lr_finder;
mod norm;
pub mod optim;
mod params;
pub mod reference;
mod scaler;
pub mod schedule;
pub mod shader;

pub use arena::{Piece, CHUNK_ALIGN, SPLIT_ALIGN, TENSOR_ALIGN};
pub use blockwise::{QuantMap, QuantizedState, StateFormat};
#[doc(hidden)]
pub use bytemuck;
pub use dtype::{DType, Precision};
pub use error::{Error, Result};
pub use gpu::Gpu;
pub use lr_finder::LrFinder;
pub use norm::{GradNorm, NormType};
pub use optim::{
    Adadelta, AdadeltaConfig, Adafactor, AdafactorConfig, Asgd, AsgdConfig, Rprop, RpropConfig,
};
pub use optim::{
    Adagrad, AdagradConfig, Adam, AdamConfig, FusedOptimizer, Optimizer, OptimizerConfig,
    ParamGroup, ReadFuture, RmsProp, RmsPropConfig, Sgd, SgdConfig,
};
pub use optim::{Adamax, AdamaxConfig, NAdam, NAdamConfig, RAdam, RAdamConfig};
pub use optim::{Lamb, LambConfig, Lion, LionConfig};
pub use optim::{ScheduleFreeAdamW, ScheduleFreeAdamWConfig};
pub use params::{Params, ParamsBuilder};
pub use scaler::{GradScaler, ScalerConfig};
pub use schedule::{
    AnnealStrategy, ChainedScheduler, ConstantLR, CosineAnnealingLR, CosineAnnealingWarmRestarts,
    CyclicLR, CyclicMode, ExponentialLR, LambdaLR, LinearLR, LrLambda, LrLambdas, LrScheduler,
    MultiStepLR, MultiplicativeLR, OneCycleLR, PerGroup, PlateauMode, PlateauScheduler,
    PlateauState, PolynomialLR, ReduceLROnPlateau, Schedule, Scheduler, SchedulerState,
    SequentialLR, StepLR, ThresholdMode,
};
pub use wgpu;
