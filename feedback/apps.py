from django.apps import AppConfig


class FeedbackConfig(AppConfig):
    name = "feedback"

    def ready(self) -> None:
        from annotation.pages import campaign_link_register

        # The campaign page lists these (annotation never imports feedback).
        campaign_link_register(label="Quality control", url_name="feedback:quality")
        campaign_link_register(label="Ratings", url_name="feedback:ratings")
        campaign_link_register(label="Snapshots and exports", url_name="feedback:snapshots",
                               by_slug=False)
