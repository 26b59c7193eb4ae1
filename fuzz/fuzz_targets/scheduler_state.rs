//! Fuzz scheduler-state loading: any byte blob is parsed as JSON into a `SchedulerState`, a
//! `PlateauState` and a checkpoint `SchedulerRecord`, and every state that parses is handed to
//! `load_state` of fresh schedulers of a fixed SGD optimizer (two groups): a StepLR, a
//! CosineAnnealingLR and a ReduceLROnPlateau. `load_state` validates and only then changes
//! anything; it runs on the host (the optimizer is built once on the GPU, lavapipe on a CPU-only
//! machine). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Mutex, OnceLock};
use wgpu_optim::checkpoint::SchedulerRecord;
use wgpu_optim::{
    CosineAnnealingLR, FusedOptimizer, Gpu, ParamGroup, Params, PlateauScheduler, PlateauState,
    ReduceLROnPlateau, Scheduler, SchedulerState, Sgd, SgdConfig, StepLR,
};

fn optimizer() -> &'static Mutex<Sgd> {
    static O: OnceLock<Mutex<Sgd>> = OnceLock::new();
    O.get_or_init(|| {
        let gpu =
            Gpu::new().expect("a GPU adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
        let params = Params::zeros(&gpu, &[("w", 4), ("b", 2)]).unwrap();
        let a = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..Default::default()
        };
        let b = SgdConfig {
            lr: 0.01,
            ..a.clone()
        };
        let opt: Sgd = FusedOptimizer::with_groups(
            &params,
            vec![ParamGroup::new(["w"], a), ParamGroup::rest(b)],
        )
        .unwrap();
        std::mem::forget(params);
        Mutex::new(opt)
    })
}

fn epochs(opt: &mut Sgd, state: &SchedulerState) {
    if let Ok(mut s) = Scheduler::new(opt, StepLR::new(3)) {
        let _ = s.load_state(opt, state);
    }
    if let Ok(mut s) = Scheduler::new(opt, CosineAnnealingLR::new(10)) {
        let _ = s.load_state(opt, state);
    }
}

fn plateau(opt: &mut Sgd, state: &PlateauState) {
    if let Ok(mut s) = PlateauScheduler::new(opt, ReduceLROnPlateau::default()) {
        let _ = s.load_state(opt, state);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut opt = optimizer().lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(state) = serde_json::from_slice::<SchedulerState>(data) {
        epochs(&mut opt, &state);
    }
    if let Ok(state) = serde_json::from_slice::<PlateauState>(data) {
        plateau(&mut opt, &state);
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        match SchedulerRecord::from_json(v) {
            Ok(SchedulerRecord::Epochs(s)) => epochs(&mut opt, &s),
            Ok(SchedulerRecord::Plateau(s)) => plateau(&mut opt, &s),
            Err(_) => {}
        }
    }
});
