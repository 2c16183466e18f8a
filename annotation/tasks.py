from celery import shared_task

from config.queues import Queue


@shared_task(queue=Queue.DEFAULT, ignore_result=True, time_limit=60)
def expire_leases_task() -> None:
    from annotation.services.scheduling import assignments_expire

    assignments_expire()


@shared_task(queue=Queue.DEFAULT, acks_late=True, ignore_result=True, time_limit=300)
def reprioritise_campaigns_task() -> None:
    """Recompute the active order of every campaign that has new judgments."""
    from annotation.services.ordering import campaign_reprioritise, campaigns_needing_priorities

    for campaign_id in campaigns_needing_priorities():
        campaign_reprioritise(campaign_id=campaign_id)
