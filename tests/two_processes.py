"""The command of the tests that run two processes: ``accelerate launch`` with gloo DDP on CPU.

``--multi_gpu`` on a CPU-only host gives torchrun workers with the gloo backend; ``--cpu`` would start ONE process.
"""

#: ``accelerate launch`` options: two processes on one machine, no mixed precision, no dynamo.
TWO_CPU_PROCESSES = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
LAUNCH_TWO_CPU_PROCESSES = ["accelerate", "launch", *TWO_CPU_PROCESSES]
