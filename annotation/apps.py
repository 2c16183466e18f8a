from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"

    def ready(self) -> None:
        from annotation import receivers
        from policy.signals import candidate_job_finished

        # ``policy`` may not import this app: it announces finished candidate jobs instead.
        candidate_job_finished.connect(receivers.on_candidate_job_finished,
                                       dispatch_uid="annotation.campaign_sampling")
