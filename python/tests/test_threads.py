"""Sessions release the GIL: two Python threads running concurrently give the results of one."""

import threading
import time

import numpy as np

from conftest import tiny_input


def test_two_threads_match_one(bundled_model):
    x = [tiny_input(bundled_model, 16, seed=s) for s in (1, 2)]
    reference = [bundled_model.session(threads=1, batch=16).run(xi)["logits"] for xi in x]
    results = {}
    errors = []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            session = bundled_model.session(threads=1, batch=16)
            barrier.wait()
            for _ in range(3):
                results.setdefault(i, []).append(session.run(x[i])["logits"])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in (0, 1):
        for got in results[i]:
            np.testing.assert_array_equal(got, reference[i])


def test_one_session_shared_by_threads(tiny):
    session = tiny.session(threads=1, batch=4)
    x = tiny_input(tiny, 4, seed=5)
    want = session.run(x)["pooler_output"]
    out = []

    def work():
        for _ in range(20):
            out.append(session.run(x)["pooler_output"])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 80
    for got in out:
        np.testing.assert_array_equal(got, want)


def test_the_gil_is_released_while_running(bundled_model):
    """The main thread keeps running Python while another thread is inside Session.run: held
    for a whole run (~0.1-1 s), the GIL would stop it for all but a few switch intervals."""
    session = bundled_model.session(threads=1, batch=16)
    x = tiny_input(bundled_model, 16, seed=7)
    session.run(x)

    def count_while_alive(thread):
        """Iterations of a tight Python loop while `thread` runs, per second."""
        ticks = 0
        start = time.perf_counter()
        thread.start()
        while thread.is_alive():
            ticks += 1
        elapsed = time.perf_counter() - start
        thread.join()
        return ticks / elapsed

    rate = count_while_alive(threading.Thread(target=time.sleep, args=(0.3,)))
    during = count_while_alive(threading.Thread(target=lambda: [session.run(x) for _ in range(3)]))
    # Released: about the idle rate (less on a busy machine); held: a few percent.
    assert during > 0.1 * rate, (during, rate)
