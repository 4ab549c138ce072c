from src.reporting.cpu_repro.render import main

main()
