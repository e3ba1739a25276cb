//! The kernel's BTF (type information) from guest memory. TODO(helper C).
