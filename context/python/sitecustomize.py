"""lanemesh context propagation for Python apps (context/README.md).

The webhook puts this file's directory first on PYTHONPATH; the interpreter imports it at
start-up. It appends the payload's packages to the *end* of sys.path, so every package the app
installed itself (urllib3, requests, even its own opentelemetry) wins over the payload's copy,
and then starts OpenTelemetry's auto-instrumentation, which makes the app forward
`traceparent` and `baggage` on its outbound calls. A failure is reported and the app runs on
uninstrumented: a context problem must never stop the app.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
_lib = os.path.join(os.path.dirname(_here), "lib")
if _lib not in sys.path:
    sys.path.append(_lib)

try:
    from opentelemetry.instrumentation.auto_instrumentation import initialize

    initialize()
except Exception as error:  # noqa: BLE001 - any failure leaves the app running
    print(
        "lanemesh-context: OpenTelemetry auto-instrumentation not started: %r" % (error,),
        file=sys.stderr,
    )
