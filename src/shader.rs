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

/// Bytes of one parameter group's step scalars (16 words): the most a
/// [`crate::OptimizerConfig::Scalars`] may hold.
pub const SCALAR_SLOT_BYTES: usize = 64;

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

/// The shared WGSL of every optimizer's update kernel: bindings 0–4, the kernel's entry point
/// (index, scalars, bounds and skip check) and the gradient helpers.
const COMMON: &str = include_str!("../shaders/common.wgsl");

/// The full source of an update kernel: the generated structs, the common prologue, one
/// `var<storage, read_write>` per state slot (bindings 5, 6, ... in `slots` order) and the
/// optimizer's own `fn update(i: u32, s: Scalars)` from `family`.
pub(crate) fn update_kernel<S: ShaderStruct>(slots: &[&str], family: &str) -> String {
    let mut src = String::new();
    src += &Ctrl::wgsl();
    src += &S::wgsl();
    src += &unpack_scalars::<S>();
    src += COMMON;
    for (k, slot) in slots.iter().enumerate() {
        src += &format!(
            "@group(0) @binding({}) var<storage, read_write> {slot}: array<vec4<f32>>;\n",
            5 + k
        );
    }
    src += family;
    src
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

    fn check_update_kernel<C: crate::OptimizerConfig>() {
        let src = update_kernel::<C::Scalars>(C::SLOTS, C::SHADER);
        let (module, layouter) = parse(&src);
        assert_layout::<Ctrl>(&module, &layouter);
        assert_layout::<C::Scalars>(&module, &layouter);
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
        assert_eq!(bindings(&module), want, "bindings of {}", C::NAME);
        assert!(
            module.entry_points.iter().any(|e| e.name == "main"),
            "{} has no entry point",
            C::NAME
        );
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
    }

    #[test]
    fn norm_and_select_passes_agree_with_the_host() {
        let (module, layouter) = parse(&crate::norm::norm_source());
        assert_layout::<Ctrl>(&module, &layouter);
        assert_layout::<crate::scaler::ScalerState>(&module, &layouter);
        assert_layout::<crate::norm::NormLevel>(&module, &layouter);
        assert_layout::<crate::norm::NormSettings>(&module, &layouter);
        let (module, layouter) = parse(&crate::optim::select_source());
        assert_layout::<Ctrl>(&module, &layouter);
    }
}
