//! The host↔shader interface: every struct that both the host and a WGSL kernel read is defined
//! once, in Rust, with [`shader_struct!`](crate::shader_struct), and its WGSL declaration is
//! generated from that definition and put in front of the kernel's source. Nothing is kept in
//! sync by position: a field added on the host is a field of the shader's struct.
//!
//! Optimizer kernels go one step further: their per-step scalars (one [`ShaderStruct`] per
//! optimizer, see [`crate::OptimizerConfig::Scalars`]) travel in a 64-byte slot per parameter
//! group, and the generated `unpack_scalars` turns the slot into the struct, field by field at
//! the offsets Rust gives them.
//!
//! ```
//! use wgpu_optim::shader::ShaderStruct;
//! wgpu_optim::shader_struct! {
//!     /// Scalars of a sign-SGD step.
//!     pub struct SignSgdScalars {
//!         /// -lr
//!         pub neg_lr: f32,
//!         /// 1 on the first step
//!         pub first: u32,
//!     }
//! }
//! assert_eq!(
//!     SignSgdScalars::wgsl(),
//!     "struct SignSgdScalars {\n    neg_lr: f32,\n    first: u32,\n}\n"
//! );
//! ```

mod kernel;

#[cfg(test)]
use crate::dtype::DType;
pub(crate) use kernel::{storage_binding, update_kernel, Storage, DTYPE};

/// A WGSL scalar type a [`shader_struct!`](crate::shader_struct) field may have.
pub trait WgslScalar: bytemuck::Pod {
    /// The WGSL spelling (`f32`, `u32`, `i32`).
    const WGSL: &'static str;
}

impl WgslScalar for f32 {
    const WGSL: &'static str = "f32";
}
impl WgslScalar for u32 {
    const WGSL: &'static str = "u32";
}
impl WgslScalar for i32 {
    const WGSL: &'static str = "i32";
}

/// One field of a [`ShaderStruct`]: its name, WGSL type, byte offset and size as Rust lays it
/// out (`#[repr(C)]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name, the same on both sides.
    pub name: &'static str,
    /// Its WGSL type.
    pub wgsl: &'static str,
    /// Byte offset in the `#[repr(C)]` struct.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// A `#[repr(C)]` plain-data struct that a WGSL kernel reads: its name and fields, from which the
/// WGSL declaration is generated. Implemented by [`shader_struct!`](crate::shader_struct).
pub trait ShaderStruct: bytemuck::Pod + std::fmt::Debug + Send + Sync + 'static {
    /// The struct's name, the same on both sides.
    const NAME: &'static str;
    /// Every field, in declaration order.
    const FIELDS: &'static [Field];

    /// The WGSL declaration of this struct.
    fn wgsl() -> String {
        let mut s = format!("struct {} {{\n", Self::NAME);
        for f in Self::FIELDS {
            s += &format!("    {}: {},\n", f.name, f.wgsl);
        }
        s + "}\n"
    }
}

/// Define a `#[repr(C)]`, [`bytemuck::Pod`] struct of `f32`/`u32`/`i32` fields that WGSL kernels
/// read, and implement [`ShaderStruct`] for it (field names, offsets and sizes from the Rust
/// definition). Doc comments on the struct and its fields are kept.
///
/// See the [module documentation](crate::shader) for an example.
#[macro_export]
macro_rules! shader_struct {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty),*
        }
        // SAFETY: `#[repr(C)]` with only 4-byte scalar fields (`WgslScalar`: f32, u32, i32), so
        // there is no padding and every bit pattern is valid.
        unsafe impl $crate::bytemuck::Zeroable for $name {}
        unsafe impl $crate::bytemuck::Pod for $name {}
        impl $crate::shader::ShaderStruct for $name {
            const NAME: &'static str = stringify!($name);
            const FIELDS: &'static [$crate::shader::Field] = &[$($crate::shader::Field {
                name: stringify!($field),
                wgsl: <$ty as $crate::shader::WgslScalar>::WGSL,
                offset: ::std::mem::offset_of!($name, $field),
                size: ::std::mem::size_of::<$ty>(),
            }),*];
        }
        const _: () = {
            $(assert!(::std::mem::size_of::<$ty>() == 4, "shader_struct fields are 4-byte scalars");)*
        };
    };
}

/// Bytes of one parameter group's step scalars (16 words): the optimizer's
/// [`crate::OptimizerConfig::Scalars`] (at most [`OPTIMIZER_SCALAR_BYTES`]), then the group's
/// L1 coefficient in the last word.
///
/// ```
/// assert_eq!(wgpu_optim::shader::SCALAR_SLOT_BYTES, 64);
/// ```
pub const SCALAR_SLOT_BYTES: usize = 64;

/// The most a [`crate::OptimizerConfig::Scalars`] may hold (15 words): the last word of each
/// group's slot is the engine's (its L1 coefficient, [`crate::FusedOptimizer::set_l1`]).
///
/// ```
/// assert_eq!(wgpu_optim::shader::OPTIMIZER_SCALAR_BYTES, 60);
/// ```
pub const OPTIMIZER_SCALAR_BYTES: usize = 60;

/// WGSL of `fn unpack_scalars(p: array<vec4<f32>, 4>) -> S`, reading each field of `S` from the
/// 64-byte slot at the offset Rust gives it (u32/i32 fields by bitcast), and `alias Scalars = S`.
pub fn unpack_scalars<S: ShaderStruct>() -> String {
    let args: Vec<String> = S::FIELDS
        .iter()
        .map(|f| {
            let word = f.offset / 4;
            let lane = ["x", "y", "z", "w"][word % 4];
            let v = format!("p[{}].{lane}", word / 4);
            match f.wgsl {
                "f32" => v,
                t => format!("bitcast<{t}>({v})"),
            }
        })
        .collect();
    format!(
        "alias Scalars = {name};\n\
         fn unpack_scalars(p: array<vec4<f32>, 4>) -> {name} {{\n    return {name}({});\n}}\n",
        args.join(", "),
        name = S::NAME,
    )
}

crate::shader_struct! {
    /// The step's control words, written on the GPU by the norm pass's `finalize` and read by the
    /// update kernels, the scalar-select pass and (on demand) the host.
    pub struct Ctrl {
        /// What every gradient is multiplied by: 1 / loss scale × clip coefficient.
        pub grad_mul: f32,
        /// 1 when this step is skipped (a non-finite gradient with skipping, clipping or a scaler).
        pub skip: u32,
        /// The total gradient norm (after unscaling; NaN / inf for a non-finite gradient).
        pub norm: f32,
        /// Steps skipped so far.
        pub skipped: u32,
    }
}

impl Ctrl {
    /// The state before any step: multiplier 1, nothing skipped.
    pub const INITIAL: Ctrl = Ctrl {
        grad_mul: 1.0,
        skip: 0,
        norm: 0.0,
        skipped: 0,
    };
}

crate::shader_struct! {
    /// The key of the step's random stream (stochastic rounding), written by the host each step.
    pub struct StepRng {
        /// `dtype::step_key(seed, step counter)`.
        pub key: u32,
        /// Unused (a uniform is a multiple of 16 bytes).
        pub pad0: u32,
        /// Unused.
        pub pad1: u32,
        /// Unused.
        pub pad2: u32,
    }
}

/// `decls` (generated struct declarations) in front of a shader's own source.
pub(crate) fn with_structs(decls: &[String], source: &str) -> String {
    decls.concat() + source
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::shader_struct! {
        struct Mixed {
            a: f32,
            b: u32,
            c: f32,
            d: f32,
            e: i32,
        }
    }

    #[test]
    fn unpack_reads_each_field_at_its_offset() {
        assert_eq!(
            unpack_scalars::<Mixed>(),
            "alias Scalars = Mixed;\nfn unpack_scalars(p: array<vec4<f32>, 4>) -> Mixed {\n    \
             return Mixed(p[0].x, bitcast<u32>(p[0].y), p[0].z, p[0].w, bitcast<i32>(p[1].x));\n}\n"
        );
        assert_eq!(Mixed::FIELDS[4].offset, 16);
    }

    /// Parse `src` with naga and compare the struct `S` as the shader lays it out with the Rust
    /// definition: every member's name, offset and size, and the struct's size.
    fn assert_layout<S: ShaderStruct>(module: &naga::Module, layouter: &naga::proc::Layouter) {
        let (handle, ty) = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(S::NAME))
            .unwrap_or_else(|| panic!("struct {} is not in the shader", S::NAME));
        let naga::TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{} is not a struct", S::NAME);
        };
        let got: Vec<(String, usize, usize)> = members
            .iter()
            .map(|m| {
                let name = m.name.clone().unwrap_or_default();
                (name, m.offset as usize, layouter[m.ty].size as usize)
            })
            .collect();
        let want: Vec<(String, usize, usize)> = S::FIELDS
            .iter()
            .map(|f| (f.name.to_string(), f.offset, f.size))
            .collect();
        assert_eq!(got, want, "{} differs between host and shader", S::NAME);
        assert_eq!(
            *span as usize,
            std::mem::size_of::<S>(),
            "size of {}",
            S::NAME
        );
        assert_eq!(layouter[handle].size as usize, std::mem::size_of::<S>());
    }

    fn parse(src: &str) -> (naga::Module, naga::proc::Layouter) {
        let module = naga::front::wgsl::parse_str(src)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(src)));
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).expect("layout");
        (module, layouter)
    }

    /// `(binding, name)` of every resource of group 0, sorted.
    fn bindings(module: &naga::Module) -> Vec<(u32, String)> {
        let mut b: Vec<(u32, String)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| {
                let rb = v.binding.as_ref()?;
                assert_eq!(rb.group, 0);
                Some((rb.binding, v.name.clone().unwrap_or_default()))
            })
            .collect();
        b.sort();
        b
    }

    /// Every storage variant of `C`'s update kernel parses, lays out the shared structs as the
    /// host does and binds what the engine binds.
    fn check_update_kernel<C: crate::OptimizerConfig>() {
        let mut variants = Vec::new();
        for param in DType::ALL {
            for state in DType::ALL {
                for (master_binding, stochastic) in
                    [(false, false), (false, true), (true, false), (true, true)]
                {
                    variants.push(Storage {
                        param,
                        state,
                        master_binding,
                        stochastic,
                        q8: 0,
                    });
                }
            }
        }
        for storage in variants {
            let src = update_kernel::<C::Scalars>(C::SLOTS, C::SHADER, storage, C::TENSOR_SUMS);
            let (module, layouter) = parse(&src);
            assert_layout::<Ctrl>(&module, &layouter);
            assert_layout::<C::Scalars>(&module, &layouter);
            assert_layout::<StepRng>(&module, &layouter);
            let mut want: Vec<(u32, String)> = ["scal", "ctrl", "group_of", "param", "grad"]
                .iter()
                .enumerate()
                .map(|(i, n)| (i as u32, n.to_string()))
                .collect();
            want.extend(
                C::SLOTS
                    .iter()
                    .enumerate()
                    .map(|(k, n)| (5 + k as u32, n.to_string())),
            );
            let mut next = 5 + C::SLOTS.len() as u32;
            if storage.master_binding {
                want.push((next, "master".to_string()));
                next += 1;
            }
            want.push((next, "rng".to_string()));
            if C::TENSOR_SUMS > 0 {
                want.push((next + 1, "tsum_table".to_string()));
                want.push((next + 2, "tsums".to_string()));
            }
            assert_eq!(
                bindings(&module),
                want,
                "bindings of {} {storage:?}",
                C::NAME
            );
            let entries: Vec<&str> = module
                .entry_points
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            let expected: &[&str] = if C::FACTORED {
                &[
                    "main",
                    "main_sums",
                    "main_partials",
                    "main_factor",
                    "main_rowmean",
                ]
            } else if C::TENSOR_SUMS > 0 {
                &["main", "main_sums"]
            } else {
                &["main"]
            };
            for e in expected {
                assert!(entries.contains(e), "{} has no entry point {e}", C::NAME);
            }
        }
    }

    /// The 8-bit kernel of `C` (every slot quantized, each param dtype, with and without
    /// master weights) parses, validates (uniformity of its barriers included) and binds
    /// the slots, the random key and the block table where the engine does.
    fn check_blockwise_kernel<C: crate::OptimizerConfig>() {
        for param in DType::ALL {
            for master_binding in [false, true] {
                let storage = Storage {
                    param,
                    state: DType::F32,
                    master_binding,
                    stochastic: false,
                    q8: (1u8 << C::SLOTS.len()) - 1,
                };
                let src = update_kernel::<C::Scalars>(C::SLOTS, C::SHADER, storage, 0);
                let (module, layouter) = parse(&src);
                assert_layout::<C::Scalars>(&module, &layouter);
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::empty(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{}: {}", C::NAME, e.emit_to_string(&src)));
                let b = bindings(&module);
                let k = C::SLOTS.len() as u32;
                let rng = 5 + k + master_binding as u32;
                assert!(b.contains(&(rng, "rng".to_string())), "{b:?}");
                assert!(b.contains(&(rng + 1, "qtab".to_string())), "{b:?}");
                for (j, slot) in C::SLOTS.iter().enumerate() {
                    assert!(b.contains(&(5 + j as u32, slot.to_string())), "{b:?}");
                }
                assert!(module.entry_points.iter().any(|e| e.name == "main_q8"));
            }
        }
    }

    #[test]
    fn blockwise_kernels_agree_with_the_host() {
        check_blockwise_kernel::<crate::AdamConfig>();
        check_blockwise_kernel::<crate::SgdConfig>();
        check_blockwise_kernel::<crate::RmsPropConfig>();
        check_blockwise_kernel::<crate::AdagradConfig>();
        check_blockwise_kernel::<crate::LionConfig>();
    }

    #[test]
    fn update_kernels_agree_with_the_host() {
        check_update_kernel::<crate::AdamConfig>();
        check_update_kernel::<crate::SgdConfig>();
        check_update_kernel::<crate::RmsPropConfig>();
        check_update_kernel::<crate::AdagradConfig>();
        check_update_kernel::<crate::AdadeltaConfig>();
        check_update_kernel::<crate::RpropConfig>();
        check_update_kernel::<crate::AsgdConfig>();
        check_update_kernel::<crate::AdamaxConfig>();
        check_update_kernel::<crate::RAdamConfig>();
        check_update_kernel::<crate::NAdamConfig>();
        check_update_kernel::<crate::ScheduleFreeAdamWConfig>();
        check_update_kernel::<crate::LambConfig>();
        check_update_kernel::<crate::LionConfig>();
        check_update_kernel::<crate::AdafactorConfig>();
    }

    #[test]
    fn norm_and_select_passes_agree_with_the_host() {
        for dtype in DType::ALL {
            let (module, layouter) = parse(&crate::norm::norm_source(dtype));
            assert_layout::<Ctrl>(&module, &layouter);
            assert_layout::<crate::scaler::ScalerState>(&module, &layouter);
            assert_layout::<crate::norm::NormLevel>(&module, &layouter);
            assert_layout::<crate::norm::NormSettings>(&module, &layouter);
        }
        let (module, layouter) = parse(&crate::optim::select_source());
        assert_layout::<Ctrl>(&module, &layouter);
    }
}
