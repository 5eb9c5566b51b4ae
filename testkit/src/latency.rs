//! Keeps the CPUs out of idle states while latency is measured.
//!
//! On this kind of VM (Firecracker, `haltpoll` with polling off) a halted vCPU takes
//! milliseconds to wake: a 20 ms thread sleep on an idle machine overshot by 5.6 ms at p99,
//! against 0.19 ms while a 0 µs wake-up latency is requested. Every hop of a proxied request
//! (client → Envoy → backend and back) can hit such a wake-up, so figures taken without the
//! request measure the hypervisor, not the filter. Holding `/dev/cpu_dma_latency` open with 0
//! written is the Linux PM QoS interface latency benchmarks (cyclictest, tuned's
//! latency-performance profile) use; it ends when the file is closed.

use std::io::Write;

/// Held while latency is measured; the request is withdrawn on drop.
pub struct AwakeCpus {
    _request: Option<std::fs::File>,
    /// What was obtained, for the test's or benchmark's output.
    pub state: String,
}

const PM_QOS_DEVICE: &str = "/dev/cpu_dma_latency";

/// Asks the kernel to keep every CPU able to wake within 0 µs. Without permission (not root)
/// or without the device the figures are still taken; `state` says they include idle exits.
pub fn keep_cpus_awake() -> AwakeCpus {
    let request = std::fs::OpenOptions::new()
        .write(true)
        .open(PM_QOS_DEVICE)
        .and_then(|mut file| {
            file.write_all(&0i32.to_ne_bytes())?;
            Ok(file)
        });
    match request {
        Ok(file) => AwakeCpus {
            _request: Some(file),
            state: format!("CPUs kept out of idle states ({PM_QOS_DEVICE} = 0 µs)"),
        },
        Err(error) => AwakeCpus {
            _request: None,
            state: format!(
                "could not request 0 µs wake-up latency through {PM_QOS_DEVICE} ({error}): \
                 figures include CPU idle-state exits"
            ),
        },
    }
}
