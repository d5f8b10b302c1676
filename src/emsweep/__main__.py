from emsweep.cli import main

main()
