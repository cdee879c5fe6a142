"""bench.frontdoor reads wrk's report (a wrong parse would be a wrong front-door row)."""

from __future__ import annotations

import pytest

from bench.frontdoor import parse_wrk

#: wrk 4.1 (Debian) with --latency, POSTing to a server that answers 501
SAMPLE = """\
Running 1s test @ http://127.0.0.1:18765/orders
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.74ms    2.47ms  11.44ms   56.25%
    Req/Sec   415.00     48.77   510.00     70.00%
  Latency Distribution
     50%    4.28ms
     75%    7.34ms
     90%    7.94ms
     99%    1.21s
  414 requests in 1.00s, 224.38KB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 414
Requests/sec:    412.34
Transfer/sec:    223.49KB
"""


def test_wrk_output_is_read_with_units_errors_and_refusals() -> None:
    got = parse_wrk(SAMPLE)
    assert got["percentiles_ms"] == {"p50": 4.28, "p75": 7.34, "p90": 7.94, "p99": 1210.0}
    assert (got["requests_per_s"], got["requests"], got["non_2xx"], got["socket_errors"]) == (412.34, 414, 414, 5)


def test_a_report_without_results_is_an_error_not_zero() -> None:
    with pytest.raises(RuntimeError, match="no result"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_create_pay_counts_are_read_and_their_absence_is_an_error() -> None:
    from bench.frontdoor import parse_create_pay

    assert parse_create_pay(SAMPLE + "create-pay: created 210 paid 204 refused 0\n") == {
        "created": 210, "paid": 204, "refused": 0}
    with pytest.raises(RuntimeError, match="no counts"):
        parse_create_pay(SAMPLE)
