//! Grouping cells into packed batches under a token budget (bounds memory, keeps cell order).

use std::ops::Range;

/// Splits cells (given by length, in order) into consecutive groups of at most `max_tokens` tokens.
/// A cell longer than the budget gets a group of its own.
pub fn group_by_token_budget(lengths: &[usize], max_tokens: usize) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && tokens + len > max_tokens {
            groups.push(start..i);
            start = i;
            tokens = 0;
        }
        tokens += len;
    }
    if start < lengths.len() {
        groups.push(start..lengths.len());
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_budget_and_cover_every_cell_once() {
        assert_eq!(
            group_by_token_budget(&[3, 3, 3, 10, 1], 6),
            vec![0..2, 2..3, 3..4, 4..5]
        );
        assert_eq!(group_by_token_budget(&[], 6), Vec::<Range<usize>>::new());
        assert_eq!(group_by_token_budget(&[1, 1, 1], 100), vec![0..3]);
    }
}
