//! The big arrays of a [`super::CountMatrix`] (gene indices, values): in memory, or viewed in place.
//!
//! An h5ad's uncompressed CSR `indices` and `data` are usually one contiguous stretch of the file holding
//! exactly the u32/f32 image the tokenizers read. Viewing them through the file's memory map instead of
//! reading them saves a copy of hundreds of MB (and the page clearing of a fresh buffer); on the 2-core
//! machine that was a third of the tokenizing time of a 20,000-cell matrix.

use std::ops::Deref;
use std::sync::Arc;

use rust_hdf5::MappedView;

/// An array read into memory, or viewed read-only in a file's memory map (which stays mapped, with the
/// file's shared lock held, as long as any view is alive). Dereferences to `&[T]` either way.
pub enum Stored<T> {
    Owned(Vec<T>),
    Mapped(Arc<MappedView<T>>),
}

impl<T> Stored<T> {
    /// Whether the array is a view into a file rather than a copy in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Stored::Mapped(_))
    }
}

impl<T: Clone> Stored<T> {
    /// The array to modify: a view is copied into memory first.
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if let Stored::Mapped(view) = self {
            *self = Stored::Owned(view.to_vec());
        }
        match self {
            Stored::Owned(v) => v,
            Stored::Mapped(_) => unreachable!("a view was just replaced by a copy"),
        }
    }

    /// The array as a vector (a copy for a view).
    pub fn into_vec(self) -> Vec<T> {
        match self {
            Stored::Owned(v) => v,
            Stored::Mapped(view) => view.to_vec(),
        }
    }
}

impl<T> Deref for Stored<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Stored::Owned(v) => v,
            Stored::Mapped(view) => view,
        }
    }
}

impl<T> From<Vec<T>> for Stored<T> {
    fn from(v: Vec<T>) -> Self {
        Stored::Owned(v)
    }
}

impl<T> From<MappedView<T>> for Stored<T> {
    fn from(view: MappedView<T>) -> Self {
        Stored::Mapped(Arc::new(view))
    }
}

impl<T> Default for Stored<T> {
    fn default() -> Self {
        Stored::Owned(Vec::new())
    }
}

/// A clone of a view is another view of the same map (no copy).
impl<T: Clone> Clone for Stored<T> {
    fn clone(&self) -> Self {
        match self {
            Stored::Owned(v) => Stored::Owned(v.clone()),
            Stored::Mapped(view) => Stored::Mapped(Arc::clone(view)),
        }
    }
}

/// Shown as the slice it holds.
impl<T: std::fmt::Debug> std::fmt::Debug for Stored<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Equal when the elements are, wherever they live.
impl<T: PartialEq> PartialEq for Stored<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Stored<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_arrays_deref_compare_and_modify() {
        let mut a: Stored<u32> = vec![1, 2, 3].into();
        assert!(!a.is_mapped());
        assert_eq!(&*a, &[1, 2, 3]);
        a.to_mut()[1] = 7;
        assert_eq!(a, Stored::from(vec![1, 7, 3]));
        assert_ne!(a, Stored::from(vec![1, 2, 3]));
        assert_eq!(a.clone().into_vec(), vec![1, 7, 3]);
        assert_eq!(format!("{a:?}"), "[1, 7, 3]");
    }
}
