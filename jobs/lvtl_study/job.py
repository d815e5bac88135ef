"""The lvtl study job: ship the signed Site-1 model, run the study at every site, report.

    python jobs/lvtl_study/job.py --artifact ART --env sim --clients site-1,site-2 --workspace WS
    python jobs/lvtl_study/job.py --artifact ART --export --export-dir jobs/exported
    python jobs/lvtl_study/job.py --artifact ART --env poc --project sites/project.yml
    python jobs/lvtl_study/job.py --artifact ART --env prod --startup-kit ADMIN_KIT

The exported folder runs with ``nvflare simulator DIR/lvtl_study -w WS -n 2 -c site-1,site-2``
and ``nvflare job submit -j DIR/lvtl_study``. Sites find their data through their own
configuration (``LVTL_SITE_CONFIG`` or ``LVTL_SITES_DIR``), never through the job. The job
carries no code (it names lvtl's classes, built from the lvtl installed at each participant)
and declares the privacy scope ``lvtl_metrics`` that the sites' startup kits require
(:mod:`lvtl.flare.provision`). The job itself is :mod:`lvtl.flare.job` (also
``python -m lvtl.flare.job``).
"""

from lvtl.flare.job import main

if __name__ == "__main__":
    main()
