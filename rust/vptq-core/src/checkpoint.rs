//! Packed VPTQ checkpoint layout (work in progress).
