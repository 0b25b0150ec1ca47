// The Number Token Loss on a distribution over the digit tokens 0..9, as ntl.losses.functional
// computes it (all probability on number tokens, so the number softmax is the distribution).
const NTL = (() => {
  const VALUES = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9];

  function normalize(weights) {
    const total = weights.reduce((a, b) => a + b, 0);
    return total > 0 ? weights.map((w) => w / total) : weights.map(() => 1 / weights.length);
  }

  // -log p(target): what cross-entropy charges, whatever the other tokens are worth.
  function crossEntropy(p, y) {
    return p[y] > 0 ? -Math.log(p[y]) : Infinity;
  }

  // NTL-WAS: Wasserstein-1 to the one-hot target, sum_i p_i |v_i - y|.
  function wasserstein(p, y) {
    return p.reduce((acc, pi, i) => acc + pi * Math.abs(VALUES[i] - VALUES[y]), 0);
  }

  // The expected value sum_i p_i v_i that NTL-MSE / NTL-MAE compare with the target.
  function expectedValue(p) {
    return p.reduce((acc, pi, i) => acc + pi * VALUES[i], 0);
  }

  // A Gaussian-smoothed label around y with width sigma (sigma = 0: one-hot).
  function softTarget(y, sigma) {
    if (!(sigma > 0)) return VALUES.map((v, i) => (i === y ? 1 : 0));
    return normalize(VALUES.map((v) => Math.exp(-((v - VALUES[y]) ** 2) / (2 * sigma * sigma))));
  }

  // W1 between two distributions on the sorted values: sum_k |CDF_p(k) - CDF_q(k)| (v_k+1 - v_k).
  function softWasserstein(p, q) {
    let cp = 0, cq = 0, total = 0;
    for (let k = 0; k < VALUES.length - 1; k++) {
      cp += p[k];
      cq += q[k];
      total += Math.abs(cp - cq) * (VALUES[k + 1] - VALUES[k]);
    }
    return total;
  }

  function losses(p, y, sigma) {
    const mean = expectedValue(p);
    return {
      ce: crossEntropy(p, y),
      was: wasserstein(p, y),
      mse: (mean - VALUES[y]) ** 2,
      mae: Math.abs(mean - VALUES[y]),
      w1soft: softWasserstein(p, softTarget(y, sigma)),
      mean: mean,
    };
  }

  return { VALUES, normalize, crossEntropy, wasserstein, expectedValue, softTarget, softWasserstein, losses };
})();
