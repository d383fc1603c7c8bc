import sys, time
from bench import data, jobs, specs
from bench.profile import phase_table
dp = {"epsilon": 1.0, "delta": 0}
text, kind = specs.build(sys.argv[1], d=10, k=int(sys.argv[2]) if len(sys.argv) > 2 else 2, dp=dp)
print(text)
files = data.party_files(kind, 10000, 3, d=10, k=2, fmt="parquet")
for i in range(2):
    r = jobs.run_job(text, files, launch="fork")
    print(phase_table(r))
import cProfile, pstats
from jointstats.spec import parse_spec
from jointstats.plan import make_plan
from jointstats.output import add_noise_plans
spec = parse_spec(text)
t = time.perf_counter()
plan = make_plan(spec, ["a", "b", "c"])
t1 = time.perf_counter()
cProfile.run("add_noise_plans(spec, plan)", "/tmp/np.prof")
t2 = time.perf_counter()
print("make_plan", t1 - t, "noise plans", t2 - t1)
pstats.Stats("/tmp/np.prof").sort_stats("cumulative").print_stats(25)
