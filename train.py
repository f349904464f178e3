"""Train and evaluate V2V-PoseNet. With no arguments: the embedded synthetic hand data set on this machine.

    python train.py                                   # synthetic default, minutes on a CPU
    python train.py --preset paper --data msra --root DIR --centers DIR --test-subject 3
    python train.py --help                            # every option
"""

from v2v_jax.hugepages import restart_with_huge_pages

if __name__ == "__main__":
    restart_with_huge_pages()  # before JAX loads: glibc reads its tunables only when a process starts
    from v2v_jax.train.loop import main

    main()
