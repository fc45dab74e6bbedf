//! Classification metrics: precision, recall, F1 and ROC AUC.

use serde::{Deserialize, Serialize};

/// Scores of a binary classifier on a labelled set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// tp / (tp + fp); 0 when nothing was predicted positive.
    pub precision: f64,
    /// tp / (tp + fn); 0 when there are no positives.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub f1: f64,
    /// Area under the ROC curve of the scores (ties count half); 0.5 when
    /// one class is absent.
    pub roc_auc: f64,
    /// True positives.
    pub tp: u64,
    /// False positives.
    pub fp: u64,
    /// False negatives.
    pub fn_: u64,
    /// True negatives.
    pub tn: u64,
}

/// Scores of `predicted` (decisions) and `score` (for the AUC) against `truth`.
pub fn scores(truth: &[bool], predicted: &[bool], score: &[f64]) -> Scores {
    let (mut tp, mut fp, mut fn_, mut tn) = (0u64, 0u64, 0u64, 0u64);
    for (&t, &p) in truth.iter().zip(predicted) {
        match (t, p) {
            (true, true) => tp += 1,
            (false, true) => fp += 1,
            (true, false) => fn_ += 1,
            (false, false) => tn += 1,
        }
    }
    let precision = if tp + fp > 0 { tp as f64 / (tp + fp) as f64 } else { 0.0 };
    let recall = if tp + fn_ > 0 { tp as f64 / (tp + fn_) as f64 } else { 0.0 };
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    Scores { precision, recall, f1, roc_auc: roc_auc(truth, score), tp, fp, fn_, tn }
}

/// ROC AUC by the rank-sum (Mann–Whitney) formula, with mid-ranks for ties.
pub fn roc_auc(truth: &[bool], score: &[f64]) -> f64 {
    let mut idx: Vec<usize> = (0..truth.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let pos = truth.iter().filter(|&&t| t).count() as f64;
    let neg = truth.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if truth[k] {
                rank_sum += mid;
            }
        }
        i = j + 1;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_rankings() {
        let t = [false, false, true, true];
        assert_eq!(roc_auc(&t, &[0.1, 0.2, 0.8, 0.9]), 1.0);
        assert_eq!(roc_auc(&t, &[0.9, 0.8, 0.2, 0.1]), 0.0);
        assert_eq!(roc_auc(&t, &[0.5, 0.5, 0.5, 0.5]), 0.5);
        let s = scores(&t, &[false, true, true, false], &[0.0, 1.0, 1.0, 0.0]);
        assert_eq!((s.tp, s.fp, s.fn_, s.tn), (1, 1, 1, 1));
        assert_eq!(s.f1, 0.5);
    }
}
