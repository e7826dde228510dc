//! Embedding: sigmoid attention inside an application's own wgpu frame.
//!
//! The application owns the device, the queue, the buffers and the command encoder. The
//! backend is built on that device ([`WgpuBackend::from_device`]) and records its compute pass
//! into the application's encoder ([`WgpuBackend::encode_forward`]) next to the application's
//! own commands: no copies in or out, one submit for the whole frame.
//!
//! ```text
//! cargo run --release --example embed_wgpu
//! ```

use sigmoid_attn::wgpu::{ForwardBuffers, WgpuBackend};
use sigmoid_attn::{Backend, CpuBackend, DType, HostTensor, Problem};
use wgpu::util::DeviceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- The application's side: its instance, adapter, device and queue. ---
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        match pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        {
            Ok(a) => a,
            Err(e) => {
                println!("no wgpu adapter here ({e}): nothing to embed into");
                return Ok(());
            }
        };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("application"),
        required_features: adapter.features() & wgpu::Features::SHADER_F16,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    println!("application device: {}", adapter.get_info().name);

    // --- Attention on that device (wgpu handles are cheap clones). ---
    let attn = WgpuBackend::from_device(device.clone(), queue.clone())?;
    let plan = Problem::new(2, 100, 4, 64)
        .with_dtype(DType::F32)
        .with_causal(true)
        .plan()?;

    // The application's tensors, e.g. written by its own projection passes.
    let fill = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    let (qh, kh, vh) = (
        fill(plan.q_elems(), 1),
        fill(plan.k_elems(), 2),
        fill(plan.v_elems(), 3),
    );
    let storage = |label: &str, data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (q, k, v) = (storage("q", &qh), storage("k", &kh), storage("v", &vh));
    let o_bytes = (plan.o_elems() * 4) as u64;
    let o = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("o"),
        size: o_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: o_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    // --- One frame: the application's encoder, attention recorded into it, one submit. ---
    let mut frame = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("frame"),
    });
    attn.encode_forward(
        &mut frame,
        &plan,
        ForwardBuffers {
            q: &q,
            k: &k,
            v: &v,
            o: &o,
        },
    )?;
    // ... the application's own passes that consume `o` would follow here ...
    frame.copy_buffer_to_buffer(&o, 0, &readback, 0, o_bytes);
    queue.submit([frame.finish()]);

    readback.slice(..).map_async(wgpu::MapMode::Read, |r| {
        if let Err(e) = r {
            eprintln!("map failed: {e}");
        }
    });
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&readback.slice(..).get_mapped_range()?);
    readback.unmap();

    // Check against the CPU reference.
    let cpu = CpuBackend::new();
    let mut want = HostTensor::filled(DType::F32, plan.o_elems(), 0.0);
    cpu.forward(
        &plan,
        &HostTensor::F32(qh),
        &HostTensor::F32(kh),
        &HostTensor::F32(vh),
        &mut want,
    )?;
    let want = want.to_f64();
    let err = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (f64::from(*g) - w).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    println!(
        "causal forward of {} heads × {} tokens recorded into the application's encoder: \
         max |error| vs CPU {err:.2e} (max |O| {scale:.2e})",
        plan.heads(),
        plan.seq_q()
    );
    if err.is_nan() || err > 1e-3 * scale.max(1e-6) {
        return Err(format!("mismatch: {err}").into());
    }
    Ok(())
}
