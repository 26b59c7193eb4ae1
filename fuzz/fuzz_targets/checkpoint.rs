//! Fuzz checkpoint loading: any byte blob, written as a file, is opened
//! (`checkpoint::open`: framing, header checksum, metadata) and checked against a fixed Adam
//! target (`Checkpoint::check`: optimizer kind, tensors, groups, hyperparameters, scaler, the
//! data pass with every tensor's checksum and finite values). That is everything `load` does
//! before it writes to the GPU; the GPU (lavapipe on a CPU-only machine) is only used once, to
//! build the target. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wgpu_optim::checkpoint;
use wgpu_optim::{Adam, AdamConfig, FusedOptimizer, Gpu, ParamGroup, Params};

struct Target {
    params: Params,
    opt: Adam,
    path: std::path::PathBuf,
}

// wgpu handles are Send + Sync; the target is only read.
fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let gpu =
            Gpu::new().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
        // The tensors and groups of tests/checkpoint.rs's `target` (the corpus was written for it).
        let params = Params::zeros(&gpu, &[("t0", 3), ("t1", 70), ("t2", 130), ("t3", 5)]).unwrap();
        let a = AdamConfig {
            lr: 0.01,
            amsgrad: true,
            ..Default::default()
        };
        let b = AdamConfig {
            lr: 0.02,
            weight_decay: 0.1,
            ..a.clone()
        };
        let opt: Adam = FusedOptimizer::with_groups(
            &params,
            vec![ParamGroup::new(["t0", "t2"], a), ParamGroup::rest(b)],
        )
        .unwrap();
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!(
            "wgpu-optim-fuzz-{}.safetensors",
            std::process::id()
        ));
        Target { params, opt, path }
    })
}

fuzz_target!(|data: &[u8]| {
    let t = target();
    std::fs::write(&t.path, data).unwrap();
    if let Ok(ck) = checkpoint::open(&t.path) {
        let _ = ck.optimizer_kind();
        let _ = ck.param_groups::<AdamConfig>();
        let _ = ck.check(&t.params, &t.opt);
    }
});
