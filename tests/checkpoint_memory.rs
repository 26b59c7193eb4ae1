//! Checkpoints stream: saving and loading a state much larger than a block needs about one
//! block of host memory (`checkpoint::BLOCK_BYTES`), not the state's size. Measured with a
//! counting global allocator, so this binary holds this one test only.

mod common;
use common::{gpu, randn, rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use wgpu_optim::checkpoint::{self, SaveOptions, BLOCK_BYTES};
use wgpu_optim::{Adam, AdamConfig, Optimizer, Params};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` and return how far the Rust heap grew above where it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

#[test]
fn save_and_load_stream_in_blocks() {
    let gpu = gpu();
    let mut rng = rng("save_and_load_stream_in_blocks");
    // 6 Mi elements (24 MiB) per tensor, split over two 20 MiB chunks; with Adam's two state
    // buffers the file holds 72 MiB, 4.5 blocks.
    let n = 6 << 20;
    let w = randn(&mut rng, n, 1.0);
    let mut params =
        Params::with_max_chunk_bytes(&gpu, &[("w", &w[..]), ("b", &[0.5f32; 3][..])], 20 << 20)
            .unwrap();
    assert_eq!(params.pieces("w").unwrap().len(), 2);
    drop(w);
    let mut opt = Adam::new(&params, AdamConfig::default()).unwrap();
    params.write_grad("w", &randn(&mut rng, n, 1.0)).unwrap();
    opt.step(&mut params).unwrap();
    let _ = opt.step_count(); // wait for the GPU before measuring

    let dir = std::env::temp_dir().join(format!("wgpu-optim-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.safetensors");
    let (r, save_peak) =
        peak_during(|| checkpoint::save(&path, &params, &opt, SaveOptions::default()));
    r.unwrap();
    let file_bytes = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(file_bytes > 72 << 20);

    let mut p2 = Params::zeros(&gpu, &[("w", n), ("b", 3)]).unwrap();
    let mut o2 = Adam::new(&p2, AdamConfig::default()).unwrap();
    let (r, load_peak) = peak_during(|| checkpoint::load(&path, &mut p2, &mut o2));
    r.unwrap();
    eprintln!(
        "file {} MiB; extra heap: save {:.1} MiB, load {:.1} MiB (block {} MiB)",
        file_bytes >> 20,
        save_peak as f64 / (1 << 20) as f64,
        load_peak as f64 / (1 << 20) as f64,
        BLOCK_BYTES >> 20
    );
    // One block (plus the 1 MiB write buffer and small change), far below the file's size.
    let limit = BLOCK_BYTES + (4 << 20);
    assert!(save_peak <= limit, "save needed {save_peak} bytes of heap");
    assert!(load_peak <= limit, "load needed {load_peak} bytes of heap");

    // And the data made it through the blocks and chunk pieces intact.
    assert_eq!(p2.read("w").unwrap(), params.read("w").unwrap());
    for key in ["exp_avg", "exp_avg_sq"] {
        assert_eq!(o2.state(key, "w").unwrap(), opt.state(key, "w").unwrap());
    }
    assert_eq!(o2.step_count(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}
