"""``python -m foscu`` and ``torchrun -m foscu``."""

from foscu.cli import main

if __name__ == "__main__":
    main()
