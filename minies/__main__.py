import sys

from minies._cli import main

sys.exit(main())
