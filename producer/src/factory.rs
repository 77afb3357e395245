//! Build a job's kernel from what `Preload` carries: its name, parameters, geometry and the
//! fetched inputs.

use std::collections::HashMap;

use spate_netlib::proto::{JobGeometry, Value};

use crate::kernel::{Kernel, KernelError, Null, Pattern};
use crate::rip_kernel::RipKernel;

/// Build the kernel `name` for a job. `inputs` maps input names to their bytes.
pub fn build(
    name: &str,
    params: &Value,
    geometry: &JobGeometry,
    inputs: &HashMap<String, Vec<u8>>,
) -> Result<Box<dyn Kernel>, KernelError> {
    build_with_threads(name, params, geometry, inputs, None)
}

/// Like [`build`], with the number of compute threads a kernel may use (`None`: all cores,
/// unless the job's parameters say otherwise).
pub fn build_with_threads(
    name: &str,
    params: &Value,
    geometry: &JobGeometry,
    inputs: &HashMap<String, Vec<u8>>,
    threads: Option<usize>,
) -> Result<Box<dyn Kernel>, KernelError> {
    match name {
        "pattern" => Ok(Box::new(Pattern::from_params(params)?)),
        "null" => Ok(Box::new(Null)),
        "rip" => Ok(Box::new(RipKernel::new(params, geometry, inputs, threads)?)),
        other => Err(KernelError::Unknown(other.to_string())),
    }
}

/// What building kernel `name` would find wrong with a job, before it is admitted (its
/// parameters; for `rip`, its image among `inputs`, read with `read`). Cheap: nothing is
/// rendered.
pub fn check(
    name: &str,
    params: &Value,
    geometry: &JobGeometry,
    inputs: &[String],
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<(), KernelError> {
    match name {
        "pattern" => Pattern::from_params(params).map(|_| ()),
        "null" => Ok(()),
        "rip" => crate::rip_kernel::check_rip(params, geometry, inputs, read),
        other => Err(KernelError::Unknown(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> JobGeometry {
        JobGeometry {
            channels: 1,
            lines: 10,
            line_bytes: 10,
            pixels: None,
        }
    }

    #[test]
    fn builds_known_kernels_and_names_unknown_ones() {
        let none = HashMap::new();
        assert_eq!(
            build("pattern", &Value::default(), &geo(), &none)
                .unwrap()
                .name(),
            "pattern"
        );
        assert_eq!(
            build("null", &Value::default(), &geo(), &none)
                .unwrap()
                .name(),
            "null"
        );
        assert!(matches!(
            build("nope", &Value::default(), &geo(), &none),
            Err(KernelError::Unknown(n)) if n == "nope"
        ));
    }
}
