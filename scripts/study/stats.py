"""The claims' statistics: Welch's and the paired t-test against the paper's gap, Holm's correction
within a table, and the verdict (holds / reversed / not established) at the adjusted p."""
import math

from .schema import EVALS, claim_evals


def mean_std(values):
    """(mean, sample std or None for one value, n); (None, None, 0) for none."""
    n = len(values)
    if not n:
        return None, None, 0
    m = sum(values) / n
    if n == 1:
        return m, None, 1
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)), n


def fmt_mean_std(values, digits=2):
    m, s, n = mean_std(values)
    if n == 0:
        return None
    if s is None:
        return '%.*f (1 seed)' % (digits, m)
    return '%.*f ± %.*f' % (digits, m, digits, s)


#: the level of every test; a table's verdicts use its Holm-adjusted p-values at this level
ALPHA = 0.05


def welch(a, b):
    """Welch's two-sample t on a and b: {diff, low, high, p, df, se} with the (1 - ALPHA) CI of
    mean(a) - mean(b); None when a sample has fewer than 2 values or both have no spread (the
    test is undefined)."""
    from scipy import stats
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    (ma, sa, _), (mb, sb, _) = mean_std(a), mean_std(b)
    va, vb = sa * sa / na, sb * sb / nb
    if va + vb == 0:
        return None
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return _t_result(ma - mb, se, df, stats)


def paired(a, b):
    """The paired t on a[i] - b[i] (two numbers of one trained network): as :func:`welch`, df n - 1."""
    from scipy import stats
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return None
    m, s, n = mean_std(d)
    if s == 0:
        return None
    return _t_result(m, s / math.sqrt(n), n - 1, stats)


def _t_result(diff, se, df, stats):
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    return {'diff': diff, 'low': diff - half, 'high': diff + half, 'se': se, 'df': df,
            'p': float(2 * stats.t.sf(abs(diff) / se, df))}


def mean_ci(values):
    """{mean, low, high, n} with the (1 - ALPHA) t-interval of the mean; low/high None below 2 values."""
    m, sd, n = mean_std(values)
    if n < 2:
        return {'mean': m, 'low': None, 'high': None, 'n': n}
    if sd == 0:
        return {'mean': m, 'low': m, 'high': m, 'n': n}
    from scipy import stats
    t = _t_result(m, sd / math.sqrt(n), n - 1, stats)
    return {'mean': m, 'low': t['low'], 'high': t['high'], 'n': n}


def holm(pvalues):
    """Holm's step-down adjustment of the p-values (None entries are not tests and stay None)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(tested), list(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        # the k-th smallest p is multiplied by the number of hypotheses not yet rejected, and the
        # adjusted values are made monotone, so rejecting at ALPHA is Holm's procedure
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def claim_values(claim, summaries):
    """(values of a, values of b, is_paired) of a claim; a claim on one row compares its two
    evaluations seed by seed (both numbers of a seed come from one trained network)."""
    which_a, which_b = claim_evals(claim)
    if claim['a'] == claim['b']:
        pairs = summaries[claim['a']]['paired']
        return [p[EVALS.index(which_a)] for p in pairs], [p[EVALS.index(which_b)] for p in pairs], True
    return summaries[claim['a']][which_a], summaries[claim['b']][which_b], False


def claim_test(claim, summaries, not_run=None):
    """The statistics of one claim: {values, paired, test (see :func:`welch`) or None, reason}.
    ``reason`` says why there is no test (a row not run in this profile, fewer than 2 seeds)."""
    reasons = [(not_run or {})[r] for r in (claim['a'], claim['b']) if r in (not_run or {})]
    if reasons:
        return {'a': [], 'b': [], 'paired': claim['a'] == claim['b'], 'test': None, 'reason': reasons[0]}
    a, b, is_paired = claim_values(claim, summaries)
    test = paired(a, b) if is_paired else welch(a, b)
    reason = None
    if test is None:
        reason = ('fewer than 2 seeds in a row' if min(len(a), len(b)) < 2
                  else 'no spread in either row: the t-test is undefined')
    return {'a': a, 'b': b, 'paired': is_paired, 'test': test, 'reason': reason}


def claim_verdict(claim, result, p_holm):
    """One of 'holds', 'reversed', 'not established' (module doc): from the Holm-adjusted p.

    A directional paper claim holds when the difference is established with the paper's sign,
    and is reversed when it is established with the other.  "No gain" (paper = 0) cannot be
    established by a test of difference: it is reversed by an established gain, otherwise not
    established (the line states the gain the CI rules out).  A claim without a paper number
    (this project's question) holds when a difference is established, in the observed direction,
    which the line names."""
    test = result['test']
    if test is None or p_holm is None or not p_holm < ALPHA:
        return 'not established'
    paper = claim.get('paper')
    if paper is None:
        return 'holds'
    if paper == 0:
        return 'reversed' if test['diff'] > 0 else 'not established'
    return 'holds' if (test['diff'] > 0) == (paper > 0) else 'reversed'
