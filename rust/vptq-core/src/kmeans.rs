//! Weighted k-means (work in progress).
