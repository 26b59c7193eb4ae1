//! The bridge between a Burn module and the arena: the module's float parameters resolved to
//! the wgpu buffers behind them, the optimizer's view of the model fixed on its first step, and
//! the copies between the two (into the arena before a step, back into the module after).

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::optim::{FusedOptimizer, OptimizerConfig};
use crate::params::Params;
use ::burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use ::burn::optim::GradientsParams;
use ::burn::tensor::{DType, Tensor};
use burn_cubecl::fusion::{CubeFusionHandle, FusionCubeRuntime};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{Cube, CubeBackend, CubeDevice};
use burn_fusion::stream::{Operation, StreamId};
use burn_fusion::ExecutionError;
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use cubecl::wgpu::{AutoCompiler, WgpuDevice, WgpuResource, WgpuServer};
use cubecl_runtime::storage::ManagedResource;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One float parameter of the model, as a step sees it.
pub(super) struct Found {
    pub(super) id: ParamId,
    pub(super) path: String,
    pub(super) len: usize,
    /// The parameter's shape.
    pub(super) shape: Vec<usize>,
    /// The resolved parameter and gradient, when the step has a gradient for it. The
    /// parameter is `None` where it is the tensor the last write-back left ([`Written`]): the
    /// arena holds its values, so it is neither resolved nor copied in.
    pub(super) tensors: Option<(Option<Resolved>, Resolved)>,
}

/// A parameter as the last write-back left it: the fusion tensor written and its buffer range.
///
/// Burn never changes a live fusion tensor's values (an operation writes a new tensor, in
/// place only into a buffer whose tensor it consumes), so while the module holds this tensor
/// its values are the arena's. On another fusion stream than its gradient it is resolved
/// anyway, as resolving is what runs the work that stream still queues on it.
pub(super) struct Written {
    tensor: burn_ir::TensorId,
    range: (wgpu::Buffer, u64),
}

impl Written {
    /// The buffer range the parameter was written to.
    pub(super) fn range(&self) -> (wgpu::Buffer, u64) {
        self.range.clone()
    }
}

/// The fusion tensor behind a Burn tensor (autodiff or not), when it is on Burn's CubeCL
/// backend: a clone, so the tensor stays as it is (no work runs).
fn fusion_of<const D: usize>(
    t: &Tensor<D>,
) -> Option<<Cube as burn_backend::BackendTypes>::FloatTensorPrimitive> {
    t.clone().inner().try_into_primitive::<Cube>().ok()
}

/// Collects the float parameters (path, id, length) and, with `grads`, resolves each
/// parameter that has a gradient together with its gradient.
struct Collect<'a> {
    path: Vec<String>,
    grads: Option<&'a mut GradientsParams>,
    /// What the last write-back left, for a step.
    written: Option<&'a HashMap<ParamId, Written>>,
    found: Vec<Found>,
    /// The fusion tensors to resolve once the visit is done: the index in `found`, whether it
    /// is the parameter (else the gradient), and the tensor.
    pending: Vec<(usize, bool, Fused)>,
    error: Option<Error>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let path = self.path.join(".");
        let grad = self.grads.as_mut().and_then(|g| g.remove::<D>(param.id));
        let shape = param.lazy_shape();
        let index = self.found.len();
        let with_grad = match grad {
            None => Ok(false),
            Some(g) => {
                let value = param.val();
                if value.is_distributed() {
                    Err(Error::BurnTensor {
                        param: path.clone(),
                        reason: "distributed parameters are not supported".into(),
                    })
                } else {
                    let unchanged = self
                        .written
                        .and_then(|w| w.get(&param.id))
                        .is_some_and(|w| {
                            fusion_of(&value).is_some_and(|p| {
                                p.id == w.tensor
                                    && fusion_of(&g).is_some_and(|g| g.stream == p.stream)
                            })
                        });
                    let p = match unchanged {
                        true => Ok(None),
                        false => fused(&path, value).map(Some),
                    };
                    p.and_then(|p| Ok((p, fused(&path, g)?)))
                        .and_then(|(p, g)| {
                            if g.shape.to_vec() != shape.to_vec() {
                                return Err(Error::BurnTensor {
                                    param: path.clone(),
                                    reason: format!(
                                        "the gradient has shape {:?}, the parameter {:?}",
                                        g.shape, shape
                                    ),
                                });
                            }
                            if let Some(p) = p {
                                self.pending.push((index, true, p));
                            }
                            self.pending.push((index, false, g));
                            Ok(true)
                        })
                }
            }
        };
        match with_grad {
            Ok(_) => self.found.push(Found {
                id: param.id,
                path,
                len: shape.num_elements(),
                shape: shape.to_vec(),
                tensors: None,
            }),
            Err(e) => self.error = Some(e),
        }
    }
}

/// The module's float parameters in visiting order; with `grads`, each resolved with its
/// gradient. With `written` (a step's), a parameter that is still the tensor the last
/// write-back left is not resolved ([`Found::tensors`]).
pub(super) fn collect<M: Module>(
    module: &M,
    grads: Option<&mut GradientsParams>,
    written: Option<&HashMap<ParamId, Written>>,
) -> Result<Vec<Found>> {
    let mut v = Collect {
        path: Vec::new(),
        grads,
        written,
        found: Vec::new(),
        pending: Vec::new(),
        error: None,
    };
    module.visit(&mut v);
    if let Some(e) = v.error {
        return Err(e);
    }
    let (mut found, pending) = (v.found, v.pending);
    let places: Vec<(usize, bool)> = pending.iter().map(|(i, p, _)| (*i, *p)).collect();
    let tensors = pending
        .into_iter()
        .map(|(i, _, t)| (found[i].path.clone(), t))
        .collect();
    let mut params = HashMap::new();
    for ((i, is_param), t) in places.into_iter().zip(resolve_all(tensors)?) {
        match is_param {
            true => drop(params.insert(i, t)),
            false => found[i].tensors = Some((params.remove(&i), t)),
        }
    }
    Ok(found)
}

/// A fusion tensor on Burn's CubeCL backend.
type Fused = <Cube as burn_backend::BackendTypes>::FloatTensorPrimitive;

/// The client of Burn's fusion server for one device.
type Client = burn_fusion::client::GlobalFusionClient<FusionCubeRuntime>;

/// The fusion tensor behind a Burn tensor (autodiff or not), when it is one a step can take:
/// f32 and on Burn's CubeCL backend. No work runs.
fn fused<const D: usize>(path: &str, tensor: Tensor<D>) -> Result<Fused> {
    let dtype = tensor.dtype();
    if dtype != DType::F32 {
        return Err(Error::BurnDtype {
            param: path.to_string(),
            dtype: format!("{dtype:?}"),
        });
    }
    tensor
        .inner()
        .try_into_primitive::<Cube>()
        .map_err(|e| Error::BurnTensor {
            param: path.to_string(),
            reason: format!("not on Burn's CubeCL (wgpu) backend: {e:?}"),
        })
}

/// The checks a resolved tensor passes before a step copies from or into its buffer.
fn checked(path: &str, cube: CubeTensor) -> Result<CubeTensor> {
    let bad = |reason: String| Error::BurnTensor {
        param: path.to_string(),
        reason,
    };
    if !matches!(cube.device, CubeDevice::Wgpu(_)) {
        return Err(bad(format!("on {:?}, not a wgpu device", cube.device)));
    }
    // Row-major without gaps; the buffer range may be longer (allocations are rounded up).
    if !cube.is_contiguous() {
        return Err(bad("not contiguous in memory".into()));
    }
    Ok(cube)
}

/// A tensor a step reads or writes: its CubeCL tensor, checked ([`checked`]), and its buffer,
/// pinned while this (or a clone of the pin) lives.
pub(super) struct Resolved {
    pub(super) tensor: CubeTensor,
    pin: Pin,
}

/// What [`TakeHandles`] hands out for one tensor: its CubeCL tensor and, where the tensor is a
/// contiguous one on a wgpu device, its buffer (or why it could not be reached).
type Taken = (
    CubeTensor,
    Option<std::result::Result<ManagedResource<WgpuResource>, String>>,
);

/// Hands the CubeCL tensors of its inputs, and their buffers, out of the fusion server.
///
/// It runs on the device's runner thread, where the compute server's calls that reach a
/// buffer (`get_resource`) run at once instead of each being a round trip to that thread.
struct TakeHandles {
    inputs: Vec<TensorIr>,
    out: Arc<Mutex<Vec<Taken>>>,
}

impl std::fmt::Debug for TakeHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeHandles")
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

impl Operation<FusionCubeRuntime> for TakeHandles {
    fn execute(
        &self,
        handles: &mut HandleContainer<CubeFusionHandle>,
    ) -> std::result::Result<(), ExecutionError> {
        let taken = self
            .inputs
            .iter()
            .map(|t| {
                let t = handles.get_float_tensor::<CubeBackend>(t);
                let reachable = matches!(t.device, CubeDevice::Wgpu(_)) && t.is_contiguous();
                let pin = reachable.then(|| {
                    t.client
                        .get_resource::<WgpuServer<AutoCompiler>>(t.handle.clone())
                        .map_err(|e| format!("{e:?}"))
                });
                (t, pin)
            })
            .collect();
        *self.out.lock().unwrap_or_else(|p| p.into_inner()) = taken;
        Ok(())
    }
}

/// The CubeCL tensors behind fusion tensors, in their order, checked and with their buffers
/// pinned. One operation on the fusion stream takes them all, after the work Burn queued on
/// them, and reaches their buffers, which flushes that work to the device (so copies recorded
/// afterwards see its values): one round trip to the device's thread per device (the wait for
/// the work queued before it), not two per tensor.
pub(super) fn resolve_all(tensors: Vec<(String, Fused)>) -> Result<Vec<Resolved>> {
    let n = tensors.len();
    let mut paths = Vec::with_capacity(n);
    // Per device: its fusion client, and the index and IR of each of its tensors.
    let mut groups = Vec::new();
    for (i, (path, t)) in tensors.into_iter().enumerate() {
        paths.push(path);
        let g = match groups
            .iter()
            .position(|(c, _, _): &(Client, Vec<usize>, Vec<TensorIr>)| {
                c.device() == t.client.device()
            }) {
            Some(g) => g,
            None => {
                groups.push((t.client.clone(), Vec::new(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[g].1.push(i);
        groups[g].2.push(t.into_ir());
    }
    // Every operation is registered before the first wait, so none of the tensors taken
    // from the module is left unaccounted for in a fusion server.
    let mut waits = Vec::with_capacity(groups.len());
    for (client, at, inputs) in groups {
        let out = Arc::new(Mutex::new(Vec::new()));
        let ir = OperationIr::Custom(CustomOpIr::new("wgpu-optim take handles", &inputs, &[]));
        let op = TakeHandles {
            inputs,
            out: out.clone(),
        };
        client.register(StreamId::current(), ir, op);
        waits.push((client, at, out));
    }
    let mut resolved: Vec<Option<Taken>> = (0..n).map(|_| None).collect();
    for (client, at, out) in waits {
        client.try_sync(|| ()).map_err(|e| {
            Error::Gpu(format!(
                "Burn's fusion server could not run the step's work: {e:?}"
            ))
        })?;
        let taken = std::mem::take(&mut *out.lock().unwrap_or_else(|p| p.into_inner()));
        if taken.len() != at.len() {
            return Err(Error::Gpu(
                "Burn's fusion server did not hand out the step's tensors".into(),
            ));
        }
        for (i, t) in at.into_iter().zip(taken) {
            resolved[i] = Some(t);
        }
    }
    resolved
        .into_iter()
        .zip(&paths)
        .map(|(t, path)| {
            let (tensor, pin) = t.expect("every tensor is in a device's group");
            let tensor = checked(path, tensor)?;
            let pin = pin
                .unwrap_or_else(|| Err("not a contiguous wgpu tensor".into()))
                .map_err(|e| Error::Gpu(format!("could not reach the buffer of `{path}`: {e}")))?;
            Ok(Resolved {
                tensor,
                pin: Arc::new(pin),
            })
        })
        .collect()
}

pub(super) fn wgpu_device(t: &CubeTensor) -> Option<&WgpuDevice> {
    match &t.device {
        CubeDevice::Wgpu(d) => Some(d),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

pub(super) fn check_device(path: &str, t: &CubeTensor, device: &WgpuDevice) -> Result<()> {
    match wgpu_device(t) {
        Some(d) if d == device => Ok(()),
        other => Err(Error::BurnTensor {
            param: path.to_string(),
            reason: format!(
                "on {other:?}, the optimizer runs on {device:?} (the device of its first step)"
            ),
        }),
    }
}

/// The parameters a write-back writes, each with the pinned buffer range it was read from
/// when the step or switch read it (the range to write in place).
pub(super) type Ranges = HashMap<ParamId, Option<(wgpu::Buffer, u64)>>;

/// A Burn buffer kept from being freed, reused or moved while the copies that use it are
/// recorded and submitted.
pub(super) type Pin = Arc<ManagedResource<WgpuResource>>;

/// The buffer range of a resolved tensor, kept pinned (not freed or reused) by `pins`.
pub(super) fn buffer_range(
    path: &str,
    t: &Resolved,
    len: usize,
    pins: &mut Vec<Pin>,
) -> Result<(wgpu::Buffer, u64)> {
    let pin = t.pin.clone();
    let r = pin.resource();
    let (buffer, offset, size) = (r.buffer.clone(), r.offset, r.size);
    if size < (len * 4) as u64 {
        return Err(Error::BurnTensor {
            param: path.to_string(),
            reason: format!("its buffer holds {size} bytes, {} needed", len * 4),
        });
    }
    pins.push(pin);
    Ok((buffer, offset))
}

/// Record the copy of `t`, the parameter `f` (or with `grad` its gradient), into slot `name`
/// of the arena; returns the pinned buffer range it was read from.
pub(super) fn copy_in(
    enc: &mut wgpu::CommandEncoder,
    params: &Params,
    name: &str,
    f: &Found,
    t: &Resolved,
    grad: bool,
    pins: &mut Vec<Pin>,
) -> Result<(wgpu::Buffer, u64)> {
    let range = buffer_range(&f.path, t, f.len, pins)?;
    copy_slot(enc, params, name, (&range.0, range.1), grad, true)?;
    Ok(range)
}

/// Record the copies between a tensor's arena slot (param or grad buffers) and a buffer range.
pub(super) fn copy_slot(
    enc: &mut wgpu::CommandEncoder,
    params: &Params,
    name: &str,
    (buffer, base): (&wgpu::Buffer, u64),
    grad: bool,
    into_arena: bool,
) -> Result<()> {
    let mut done = 0u64;
    for piece in params.pieces(name)? {
        let arena = if grad {
            params.grad_buffer(piece.chunk)
        } else {
            params.param_buffer(piece.chunk)
        }
        .expect("the layout's chunks have buffers");
        let at = (piece.offset * 4) as u64;
        let bytes = (piece.len * 4) as u64;
        if into_arena {
            enc.copy_buffer_to_buffer(buffer, base + done, arena, at, bytes);
        } else {
            enc.copy_buffer_to_buffer(arena, at, buffer, base + done, bytes);
        }
        done += bytes;
    }
    Ok(())
}

pub(super) fn clear_grad(
    enc: &mut wgpu::CommandEncoder,
    params: &Params,
    name: &str,
) -> Result<()> {
    for piece in params.pieces(name)? {
        let buf = params
            .grad_buffer(piece.chunk)
            .expect("the layout's chunks have buffers");
        enc.clear_buffer(buf, (piece.offset * 4) as u64, Some((piece.len * 4) as u64));
    }
    Ok(())
}

/// What the optimizer knows of the model, fixed on the first step.
pub(super) struct Arena<C: OptimizerConfig> {
    pub(super) gpu: Gpu,
    pub(super) device: WgpuDevice,
    pub(super) params: Params,
    pub(super) opt: FusedOptimizer<C>,
    /// Slot names (module paths), in arena order.
    pub(super) names: Vec<String>,
    /// Each slot's parameter id, module path and shape, in arena order.
    pub(super) slots: Vec<(ParamId, String, Vec<usize>)>,
    /// ParamId → slot.
    pub(super) slot: HashMap<ParamId, usize>,
    /// The parameters the last write-back left, each still holding the arena's values while
    /// the module holds that tensor.
    pub(super) written: HashMap<ParamId, Written>,
}

/// The parameters of this step against the arena's.
pub(super) fn check_same<C: OptimizerConfig>(arena: &Arena<C>, found: &[Found]) -> Result<()> {
    if found.len() != arena.names.len() {
        return Err(Error::ParamSetChanged(format!(
            "the model has {} float parameters, the optimizer's state {}",
            found.len(),
            arena.names.len()
        )));
    }
    for f in found {
        let Some(&slot) = arena.slot.get(&f.id) else {
            return Err(Error::ParamSetChanged(format!(
                "`{}` ({}) is a parameter the optimizer has no state for",
                f.path, f.id
            )));
        };
        let name = &arena.names[slot];
        let len = arena.params.len(name)?;
        if len != f.len {
            return Err(Error::ParamSetChanged(format!(
                "`{}` has {} elements, its state {len}",
                f.path, f.len
            )));
        }
        // A reshaped parameter: Adafactor's state is laid out for the old shape.
        let shape = &arena.slots[slot].2;
        if *shape != f.shape {
            return Err(Error::ParamSetChanged(format!(
                "`{}` has shape {:?}, its state {shape:?}",
                f.path, f.shape
            )));
        }
    }
    Ok(())
}

/// The first wgpu device a float parameter of the module lives on.
pub(super) struct FirstDevice {
    pub(super) device: Option<WgpuDevice>,
}

impl ModuleVisitor for FirstDevice {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.device.is_none() {
            if let Ok(CubeDevice::Wgpu(d)) =
                fused("", param.val()).map(|t| t.client.device().clone())
            {
                self.device = Some(d);
            }
        }
    }
}

/// Writes the arena's parameters into the module's tensors ([`write_back`]).
struct WriteBack<'a, C: OptimizerConfig> {
    arena: &'a Arena<C>,
    /// The parameters to write, each with the pinned buffer range it was read from, when the
    /// step read it.
    ranges: Ranges,
    enc: wgpu::CommandEncoder,
    pins: Vec<Pin>,
    path: Vec<String>,
    error: Option<Error>,
    in_place: usize,
    fresh: usize,
    written: HashMap<ParamId, Written>,
    /// The tensors to write whose buffer is not known yet: id, path, slot name, tensor.
    pending: Vec<(ParamId, String, String, Fused)>,
}

/// What [`write_back`] did.
pub(super) struct Outcome<M> {
    /// The module, its parameters written.
    pub(super) module: M,
    /// The first error (of a tensor, or of the submit), if any.
    pub(super) done: Result<()>,
    /// How many parameters were written `(in place, fresh)`.
    pub(super) writes: (usize, usize),
    /// The tensors written, for the next step ([`Arena::written`]); none after an error.
    pub(super) written: HashMap<ParamId, Written>,
}

/// Record into `enc`, after what it holds, the copies of `arena`'s values of the parameters
/// named in `ranges` into `module`'s tensors (in place where Burn's handle is exclusively
/// owned, else into fresh tensors), and submit it all.
/// The submit happens either way, so what `enc` recorded before always runs.
pub(super) fn write_back<M: Module, C: OptimizerConfig>(
    arena: &Arena<C>,
    ranges: Ranges,
    enc: wgpu::CommandEncoder,
    module: M,
) -> Outcome<M> {
    let mut writer = WriteBack {
        arena,
        ranges,
        enc,
        pins: Vec::new(),
        path: Vec::new(),
        error: None,
        in_place: 0,
        fresh: 0,
        written: HashMap::new(),
        pending: Vec::new(),
    };
    let module = module.map(&mut writer);
    if writer.error.is_none() {
        if let Err(e) = writer.write_pending() {
            writer.error = Some(e);
        }
    }
    let WriteBack {
        enc,
        pins,
        error,
        in_place,
        fresh,
        mut written,
        ..
    } = writer;
    let gpu = &arena.gpu;
    let submitted = gpu.scoped(|| {
        gpu.queue().submit([enc.finish()]);
        Ok(())
    });
    drop(pins);
    let done = submitted.and(error.map_or(Ok(()), Err));
    if done.is_err() {
        written.clear();
    }
    Outcome {
        module,
        done,
        writes: (in_place, fresh),
        written,
    }
}

impl<C: OptimizerConfig> ModuleMapper for WriteBack<'_, C> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() || !self.ranges.contains_key(&param.id) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let (shape, device) = (tensor.shape(), tensor.device());
        let updated = match self.write(id, tensor) {
            Ok(t) => t,
            Err(e) => {
                // The step returns this error; the parameter is left empty.
                self.error = Some(e);
                Tensor::empty(shape, &device)
            }
        };
        Param::from_mapped_value(id, updated, mapper)
    }
}

impl<C: OptimizerConfig> WriteBack<'_, C> {
    /// Record the copy of the arena's values of slot `name` into a buffer range.
    fn copy_out(&mut self, name: &str, (buffer, base): (wgpu::Buffer, u64)) -> Result<()> {
        copy_slot(
            &mut self.enc,
            &self.arena.params,
            name,
            (&buffer, base),
            false,
            false,
        )
    }

    /// Record the copies into the tensors [`WriteBack::write`] left for later (those whose
    /// buffer the step did not read), all reached in one go.
    fn write_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let (rest, tensors): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|(id, path, name, fused)| {
                let tensor = fused.id;
                ((id, path.clone(), name, tensor), (path, fused))
            })
            .unzip();
        for ((id, path, name, tensor), r) in rest.into_iter().zip(resolve_all(tensors)?) {
            check_device(&path, &r.tensor, &self.arena.device)?;
            let len = self.arena.params.len(&name)?;
            let range = buffer_range(&path, &r, len, &mut self.pins)?;
            self.copy_out(&name, range.clone())?;
            self.written.insert(id, Written { tensor, range });
        }
        Ok(())
    }

    /// Record the copy of the arena's values of `id` into `tensor`'s own buffer when Burn's
    /// handle is exclusively owned, else into a fresh tensor; returns the tensor for the
    /// module, with the autodiff settings `tensor` had.
    fn write<const D: usize>(&mut self, id: ParamId, tensor: Tensor<D>) -> Result<Tensor<D>> {
        let path = self.path.join(".");
        let slot = *self.arena.slot.get(&id).ok_or_else(|| {
            Error::ParamSetChanged(format!(
                "`{path}` ({id}) has no slot in the optimizer's state"
            ))
        })?;
        let name = self.arena.names[slot].clone();
        let autodiff = tensor.is_autodiff();
        let require_grad = autodiff && tensor.is_require_grad();
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let shape = tensor.shape();
        let device = tensor.device().inner();
        let fused = tensor
            .inner()
            .try_into_primitive::<Cube>()
            .map_err(|e| Error::BurnTensor {
                param: path.clone(),
                reason: format!("not on Burn's CubeCL (wgpu) backend: {e:?}"),
            })?;
        // Burn's own rule for in-place kernels: a fusion tensor nothing else refers to. Such a
        // tensor is the one the step read, so its buffer range (pinned since) is known.
        let known = self.ranges.get(&id).cloned().flatten();
        let (target, known) = if burn_backend::TensorMetadata::can_mut(&fused) {
            self.in_place += 1;
            let tensor = fused.id;
            let target = Tensor::<D>::from_primitive::<Cube>(fused);
            (target, known.map(|range| (tensor, range)))
        } else {
            drop(fused);
            self.fresh += 1;
            (Tensor::<D>::empty(shape, (&device, DType::F32)), None)
        };
        match known {
            Some((tensor, range)) => {
                self.copy_out(&name, range.clone())?;
                self.written.insert(id, Written { tensor, range });
            }
            // Reached, with the others like it, once every parameter is mapped.
            None => match fusion_of(&target) {
                Some(fused) => self.pending.push((id, path, name, fused)),
                None => {
                    return Err(Error::BurnTensor {
                        param: path,
                        reason: "not on Burn's CubeCL (wgpu) backend".into(),
                    })
                }
            },
        }
        if !autodiff {
            return Ok(target);
        }
        let mut out = Tensor::from_inner(target);
        if let Some(strategy) = checkpointing {
            out = out.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            out = out.require_grad();
        }
        Ok(out)
    }
}

/// Every float parameter of a module, resolved to its CubeCL tensor; with `written` (what the
/// last write-back left), except those still that tensor on this thread's fusion stream, once
/// one parameter on that stream is resolved: its resolve runs the work the stream queued (a
/// read of the skipped ones, say) and reaching its buffer flushes that work to the device, so
/// the skipped ones hold the arena's values and can be written in place after it.
pub(super) fn values<M: Module>(
    module: &M,
    written: Option<&HashMap<ParamId, Written>>,
) -> Result<HashMap<ParamId, Resolved>> {
    struct Values<'a> {
        path: Vec<String>,
        written: Option<&'a HashMap<ParamId, Written>>,
        stream: burn_backend::StreamId,
        /// A parameter on `stream` is resolved.
        anchored: bool,
        pending: Vec<(ParamId, (String, Fused))>,
        error: Option<Error>,
    }
    impl ModuleVisitor for Values<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }

        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }

        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.error.is_some() {
                return;
            }
            let value = param.val();
            let skip = match (self.written, fusion_of(&value)) {
                (Some(w), Some(f)) if f.stream == self.stream => {
                    let kept = self.anchored && w.get(&param.id).is_some_and(|w| w.tensor == f.id);
                    self.anchored = true;
                    kept
                }
                _ => false,
            };
            if skip {
                return;
            }
            let path = self.path.join(".");
            match fused(&path, value) {
                Ok(t) => self.pending.push((param.id, (path, t))),
                Err(e) => self.error = Some(e),
            }
        }
    }
    let mut v = Values {
        path: Vec::new(),
        written,
        stream: burn_backend::StreamId::current(),
        anchored: false,
        pending: Vec::new(),
        error: None,
    };
    module.visit(&mut v);
    if let Some(e) = v.error {
        return Err(e);
    }
    let (ids, tensors): (Vec<ParamId>, Vec<_>) = v.pending.into_iter().unzip();
    Ok(ids.into_iter().zip(resolve_all(tensors)?).collect())
}
