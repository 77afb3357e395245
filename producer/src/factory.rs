//! Build a job's kernel from what `Preload` carries: its name, parameters, geometry and the
//! fetched inputs.

use std::collections::HashMap;

use spate_netlib::proto::{JobGeometry, Value};

use crate::kernel::{Kernel, KernelError, Null, Pattern};

/// Build the kernel `name` for a job. `inputs` maps input names to their bytes.
pub fn build(
    name: &str,
    params: &Value,
    geometry: &JobGeometry,
    inputs: &HashMap<String, Vec<u8>>,
) -> Result<Box<dyn Kernel>, KernelError> {
    let _ = (geometry, inputs);
    match name {
        "pattern" => Ok(Box::new(Pattern::from_params(params)?)),
        "null" => Ok(Box::new(Null)),
        "rip" => Err(KernelError::Param {
            name: "kernel".into(),
            problem: "the rip kernel is not wired into the producer daemon yet; use `pattern` \
                      or `null`, or run `spate bench rip`"
                .into(),
        }),
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
