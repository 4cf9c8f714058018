from esr_local.cli import main

main()
