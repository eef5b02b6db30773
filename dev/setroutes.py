"""Set MIXED entries in kernels/tuning.py: setroutes.py 'codes,K,N:M=route;M=route' ..."""
import ast, sys
path = "kernels/tuning.py"
text = open(path).read()
for spec in sys.argv[1:]:
    key, entries = spec.split(":", 1)
    key = tuple(int(v) for v in key.split(","))
    prefix = "    " + repr(key) + ":"
    old = next(l for l in text.splitlines() if l.startswith(prefix))
    table = ast.literal_eval(old[len(prefix):].strip().rstrip(","))
    for e in entries.split(";"):
        m, route = e.split("=")
        table[int(m)] = route
    body = ", ".join(f'{m}: "{r}"' for m, r in sorted(table.items()))
    text = text.replace(old, f"{prefix} {{{body}}},")
open(path, "w").write(text)
